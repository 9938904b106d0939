"""Block-scaled int4: a compressor added by its own file and one registration (the op
layer's "int4" scheme is kernels/quant/int4.h plus one line of kernels/quant_schemes.h)."""

from dataclasses import dataclass
from typing import ClassVar

from .base import check_block, register
from .quantizers import RoundingQuantizer


@register
@dataclass(frozen=True)
class Int4(RoundingQuantizer):
    """Blockwise int4: scale = max|x_block| / 7, codes round(x / scale) in [-7, 7], 4 bits.
    The rounding error of an entry is at most scale / 2 (nearest) or has variance at most
    scale^2 / 4 (stochastic), and sum_j scale^2 / 4 <= B max|x|^2 / (4 * 7^2) <= B ||x||^2 /
    196 per block: ``stochastic=False``, contractive with alpha = 1 - B / 196 (for B < 196);
    ``stochastic=True``, unbiased with omega = B / 196. Wire: 4 bits per entry plus a float32
    scale per block."""

    block: int = 64
    stochastic: bool = False
    scheme: ClassVar[str] = "int4"

    def __post_init__(self) -> None:
        check_block("Int4", self.block)

    def _error_bound(self, numel) -> float:
        return min(self.block, numel) / (4.0 * 7.0**2)
