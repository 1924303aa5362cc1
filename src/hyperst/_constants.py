"""Every slot name hyperst reads or writes, and numeric defaults.

No other module spells a slot name as a string literal: use :class:`Keys`.
"""

from __future__ import annotations

__all__ = ["DEFAULT_KEY", "Keys", "SPOT_DIAMETER_UM", "GRID_PITCH_UM"]

DEFAULT_KEY = "hyperst"

#: Physical spot diameter in micrometres, by technology.
SPOT_DIAMETER_UM = {"visium": 55.0, "st": 100.0}
#: Centre-to-centre pitch of the spot grid in micrometres, by technology.
GRID_PITCH_UM = {"visium": 100.0, "st": 200.0}

#: Default side of the spot patch in micrometres (the authors' code: 224 px at 0.5 µm/px).
SPOT_PATCH_UM = 112.0
#: Default encoder input side in pixels.
PATCH_SIZE_PX = 224


class Keys:
    """Slot names derived from the ``key_added`` stem (default ``"hyperst"``).

    Parameters
    ----------
    stem
        The ``key_added`` prefix; every key below starts with it.
    """

    def __init__(self, stem: str = DEFAULT_KEY) -> None:
        if not isinstance(stem, str) or not stem:
            msg = f"Expected `key_added` to be a non-empty string, found `{stem!r}`."
            raise ValueError(msg)
        self.stem = stem

    # obsp (niche graph); names as squidpy writes them for ``key_added=stem``
    @property
    def connectivities(self) -> str:
        """``obsp`` key of the niche adjacency."""
        return f"{self.stem}_connectivities"

    @property
    def distances(self) -> str:
        """``obsp`` key of the niche distances."""
        return f"{self.stem}_distances"

    @property
    def neighbors_uns(self) -> str:
        """``uns`` key squidpy writes its neighbour parameters to."""
        return f"{self.stem}_neighbors"

    # obsm
    @property
    def embedding(self) -> str:
        """``obsm`` key of the spot image embedding (Lorentz, time first)."""
        return f"X_{self.stem}"

    @property
    def embedding_niche(self) -> str:
        """``obsm`` key of the niche image embedding."""
        return f"X_{self.stem}_niche"

    @property
    def embedding_gene(self) -> str:
        """``obsm`` key of the spot gene embedding."""
        return f"X_{self.stem}_gene"

    @property
    def embedding_gene_niche(self) -> str:
        """``obsm`` key of the niche gene embedding."""
        return f"X_{self.stem}_gene_niche"

    @property
    def poincare(self) -> str:
        """``obsm`` key of the 2-D Poincaré-disk projection."""
        return f"X_{self.stem}_poincare"

    # obs / var / layers / tables / uns
    @property
    def radius(self) -> str:
        """``obs`` key of the distance to the origin."""
        return f"{self.stem}_radius"

    @property
    def layer(self) -> str:
        """``layers`` key of predicted expression."""
        return self.stem

    @property
    def lower(self) -> str:
        """``layers``: lower bound of the conformal interval."""
        return f"{self.stem}_lower"

    @property
    def upper(self) -> str:
        """``layers``: upper bound of the conformal interval."""
        return f"{self.stem}_upper"

    @property
    def val_pcc(self) -> str:
        """``var``: the gene's Pearson correlation on the validation slides at fit time."""
        return f"{self.stem}_val_pcc"

    @property
    def reliable(self) -> str:
        """``var``: whether the validation PCC reaches the reliability threshold."""
        return f"{self.stem}_reliable"

    @property
    def predicted(self) -> str:
        """``var`` key flagging predicted genes."""
        return f"{self.stem}_predicted"

    @property
    def pcc(self) -> str:
        """``var`` key of the per-gene Pearson r written by :func:`hyperst.tl.evaluate`."""
        return f"{self.stem}_pcc"

    @property
    def metrics(self) -> str:
        """Key of the evaluation summary inside ``uns[stem]``."""
        return "metrics"

    @property
    def table(self) -> str:
        """``sdata.tables`` key of the prediction table."""
        return self.stem

    @property
    def uns(self) -> str:
        """``uns`` key of provenance."""
        return self.stem
