"""Every slot name hyperst reads or writes, and numeric defaults.

No other module spells a slot name as a string literal: use :class:`Keys`.
"""

from __future__ import annotations

from ._validation import expected

__all__ = [
    "DEFAULT_KEY",
    "GRID_PITCH_UM",
    "MONITORS",
    "RESAMPLE",
    "OUTPUT_TABLE_FLAG",
    "PATCH_SIZE_PX",
    "PSEUDOSPOTS_KEY",
    "PSEUDOSPOT_UM",
    "SPOT_DIAMETER_UM",
    "SPOT_PATCH_UM",
    "STREAMS",
    "SYNTHETIC_ATTRS",
    "TARGETS",
    "TARGET_LABELS",
    "TILES_KEY",
    "Keys",
    "Provenance",
]

DEFAULT_KEY = "hyperst"

#: Training targets and their scale, as axis labels and metric definitions spell it.
TARGET_LABELS = {"log2": "log2(1 + counts)", "log2_cp10k": "log2(1 + counts per 10,000)"}
TARGETS = tuple(TARGET_LABELS)
#: What early stopping can watch.
MONITORS = ("loss", "mse")
#: Filters that resize patches to the encoder's input (``HyperSTConfig.resample``).
RESAMPLE = ("lanczos", "bilinear")
#: The four embeddings of a spot, in the order the module returns them.
STREAMS = ("spot_image", "niche_image", "spot_gene", "niche_gene")

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
            msg = expected("key_added", "a non-empty string", stem)
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

    def bins_table(self, source: str) -> str:
        """``sdata.tables`` key of the predictions copied to the bins or cells of table ``source``."""
        return f"{self.stem}_{source}"

    def stream_embedding(self, stream: str) -> str:
        """``obsm`` key of one of the four :data:`STREAMS`' Lorentz embedding."""
        suffix = {"spot_image": "", "niche_image": "_niche", "spot_gene": "_gene", "niche_gene": "_gene_niche"}
        return f"X_{self.stem}{suffix[stream]}"

    def stream_poincare(self, stream: str) -> str:
        """``obsm`` key of a stream's Poincaré projection (that of ``spot_image`` is :attr:`poincare`)."""
        return f"{self.stream_embedding(stream)}_poincare"


class Provenance:
    """Entries of ``uns[Keys(stem).uns]``, the provenance dict :func:`hyperst.tl.predict` writes."""

    curvature = "curvature"
    target = "target"
    qc = "qc"
    intervals = "intervals"
    metrics = "metrics"
    #: Which ``obsm`` key holds which stream's shared-axes projection (``hyperst.tl.poincare(streams=True)``).
    poincare_streams = "poincare_streams"


#: ``uns`` flag of the tables hyperst writes (predictions); such tables are never taken as input.
OUTPUT_TABLE_FLAG = "hyperst_output_table"
#: Default ``sdata.tables`` key of the tile table :func:`hyperst.pp.tile` writes, and its ``uns`` key of parameters.
TILES_KEY = "hyperst_tiles"
#: Default ``sdata.tables`` key of the pseudo-spot table :func:`hyperst.pp.pseudospots` writes, and its ``uns`` key of
#: parameters; its circles are ``shapes[f"{key}_spots"]`` and each bin's or cell's pseudo-spot is
#: ``obs[f"{key}_id"]`` of the bins' or cells' table.
PSEUDOSPOTS_KEY = "hyperst_pseudospots"
#: Default side of a pseudo-spot in micrometres (7 x 7 Visium HD bins of 8 µm, about a Visium spot).
PSEUDOSPOT_UM = 56.0
#: ``sdata.attrs`` key describing how a :func:`hyperst.datasets.synthetic` slide was made.
SYNTHETIC_ATTRS = "hyperst_synthetic"
