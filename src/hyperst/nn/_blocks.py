"""Residual MLP encoder used by every stream of HyperST and by its decoder."""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import expected

__all__ = ["ResMLP"]


class _MLP(nn.Module):
    """Two-layer GELU MLP, ``hidden -> mlp_ratio * hidden -> hidden``, with dropout after each layer."""

    def __init__(self, dim: int, inner_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, inner_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(inner_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class _PreNormResidual(nn.Module):
    """``x + mlp(LayerNorm(x))``."""

    def __init__(self, dim: int, inner_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, inner_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class ResMLP(nn.Module):
    """Residual MLP encoder: ``LayerNorm -> Linear``, pre-norm residual MLP blocks, final ``LayerNorm``.

    The HyperST ``ResMLPEncoder``: linear weights are Xavier-uniform and biases zero.

    Parameters
    ----------
    in_dim
        Size of the input features.
    hidden
        Size of the hidden and output features.
    mlp_ratio
        Width of each block's inner layer, as a multiple of ``hidden``.
    dropout
        Dropout probability after each inner layer of the blocks.
    depth
        Number of residual blocks.
    output_norm
        End with a LayerNorm (the authors' block). ``False`` keeps the scale of the output, which a linear
        read-out needs when the magnitude carries signal (the HyperST decoder, see ``ModuleConfig.decoder_norm``).

    Raises
    ------
    ValueError
        If a size is not positive, ``dropout`` is outside ``[0, 1)`` or ``depth`` is negative.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        *,
        mlp_ratio: float = 2,
        dropout: float = 0.1,
        depth: int = 2,
        output_norm: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden", hidden), ("mlp_ratio", mlp_ratio)):
            if not value > 0:
                raise ValueError(expected(name, "positive", value))
        if not 0 <= dropout < 1:
            raise ValueError(expected("dropout", "in [0, 1)", dropout))
        if depth < 0:
            raise ValueError(expected("depth", "non-negative", depth))
        inner_dim = max(1, round(mlp_ratio * hidden))
        self.input_norm = nn.LayerNorm(in_dim)
        self.input_proj = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*(_PreNormResidual(hidden, inner_dim, dropout) for _ in range(depth)))
        self.output_norm = nn.LayerNorm(hidden) if output_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise linear weights Xavier-uniform and biases to zero; LayerNorms to identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Encode features.

        Parameters
        ----------
        x
            ``(..., in_dim)`` features.

        Returns
        -------
        ``(..., hidden)`` encoded features.
        """
        return self.output_norm(self.blocks(self.input_proj(self.input_norm(x))))
