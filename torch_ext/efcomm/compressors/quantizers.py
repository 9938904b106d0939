"""Blockwise quantizers: one 4-byte header per block of ``block`` entries, then packed codes
(efcomm.ops.quant_encode_ / quant_decode_add_; the per-entry rules are the codecs of
kernels/quant/, the wire layout kernels/wire_layout.h)."""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import ops
from .base import Compressor, check_block, register


class Quantizer(Compressor):
    """A blockwise quantizer over one scheme of the op layer (``scheme``); subclasses add their
    parameters and their omega or alpha."""

    scheme: ClassVar[str]

    def _levels(self) -> int:
        return 0

    def _stochastic(self) -> bool:
        return True

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("quant", numel, dtype, scheme=self.scheme, levels=self._levels(), block=self.block)

    def encode_(self, a, b, ctx, scale=1.0):
        return ops.quant_encode_(
            a,
            b,
            self.scheme,
            self._levels(),
            self.block,
            self._stochastic(),
            ctx.seed,
            ctx.step,
            ctx.bucket,
            ctx.rank,
            scale,
        )

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        ops.quant_decode_add_(h, gathered, self.scheme, self._levels(), self.block, scale, weights)

    def nonfinite_in(self, gathered, numel, dtype):
        # A block holding inf or NaN has a non-finite header (natural: the int32 sentinel).
        headers = gathered[:, : 4 * -(-numel // self.block)]
        if self.scheme == "natural":
            return (headers.view(torch.int32) == -(2**31)).any()
        return ~torch.isfinite(headers.view(torch.float32)).all()


@register
@dataclass(frozen=True)
class QSGD(Quantizer):
    """QSGD (Alistarh et al. 2017, arXiv 1610.02132) with ``levels`` = s levels per block of
    ``block`` entries: stochastic rounding of |x_j| s / ||x_block|| to an integer level.
    Unbiased, omega = min(B / s^2, sqrt(B) / s). Wire: one float32 norm per block and
    1 + ceil(log2(s + 1)) bits per entry (s = 1, 3, 7, 15, 127: 2, 3, 4, 5, 8 bits)."""

    levels: int = 7
    block: int = 512
    scheme: ClassVar[str] = "qsgd"
    unbiased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (isinstance(self.levels, int) and not isinstance(self.levels, bool) and 1 <= self.levels <= 127):
            raise ValueError(f"efcomm: QSGD levels ({self.levels!r}) must be an int in [1, 127]")
        check_block("QSGD", self.block)

    def _levels(self):
        return self.levels

    def omega(self, numel):
        b = min(self.block, numel)
        return min(b / self.levels**2, math.sqrt(b) / self.levels)


@register
@dataclass(frozen=True)
class Natural(Quantizer):
    """Natural compression (Horvath et al. 2019, arXiv 1905.10988): stochastic rounding of
    each entry to a neighbouring power of two. Unbiased, omega = 1/8. Wire: one byte per
    entry (sign and a 7-bit exponent offset) plus one int32 exponent base per block."""

    block: int = 1024
    scheme: ClassVar[str] = "natural"
    unbiased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_block("Natural", self.block)

    def omega(self, numel):
        return 1.0 / 8.0


@register
@dataclass(frozen=True)
class ScaledSign(Quantizer):
    """Scaled sign (Karimireddy et al. 2019, arXiv 1901.09847), per block:
    (||x_block||_1 / B) sign(x_j). Deterministic, biased, contractive with
    alpha = ||x||_1^2 / (B ||x||_2^2) >= 1/B (the bound reported). Wire: 1 bit per entry
    plus one float32 scale per block."""

    block: int = 1024
    scheme: ClassVar[str] = "sign"

    def __post_init__(self) -> None:
        check_block("ScaledSign", self.block)

    def _stochastic(self):
        return False

    def alpha(self, numel):
        return 1.0 / min(self.block, numel)


class RoundingQuantizer(Quantizer):
    """A per-block scale and rounding that is nearest-even (biased, contractive with
    alpha = 1 - bound) or stochastic (unbiased, omega = bound): Int8, FP8, Int4."""

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.stochastic

    def _stochastic(self):
        return self.stochastic

    def _error_bound(self, numel) -> float:
        raise NotImplementedError

    def omega(self, numel):
        return self._error_bound(numel) if self.stochastic else None

    def alpha(self, numel):
        return 1.0 - self._error_bound(numel)


@register
@dataclass(frozen=True)
class Int8(RoundingQuantizer):
    """Blockwise int8: scale = max|x_block| / 127, codes round(x / scale) in [-127, 127].
    ``stochastic=False``: nearest-even, biased, contractive with alpha = 1 - B / (4 * 127^2).
    ``stochastic=True``: unbiased, omega = B / (4 * 127^2). Wire: 8 bits per entry plus a
    float32 scale per block."""

    block: int = 256
    stochastic: bool = False
    scheme: ClassVar[str] = "int8"

    def __post_init__(self) -> None:
        check_block("Int8", self.block)

    def _error_bound(self, numel) -> float:
        return min(self.block, numel) / (4.0 * 127.0**2)


@register
@dataclass(frozen=True)
class FP8(RoundingQuantizer):
    """Blockwise fp8 e4m3 (max 448): scale = max|x_block| / 448, x / scale rounded to the
    e4m3 grid (3 mantissa bits; subnormal spacing 2^-9). ``stochastic=False``: nearest-even,
    contractive with alpha = 1 - (2^-8 + B 2^-20 / 448^2). ``stochastic=True``: unbiased with
    that omega. Wire: 8 bits per entry plus a float32 scale per block."""

    block: int = 256
    stochastic: bool = False
    scheme: ClassVar[str] = "fp8"

    def __post_init__(self) -> None:
        check_block("FP8", self.block)

    def _error_bound(self, numel) -> float:
        return 2.0**-8 + min(self.block, numel) * 2.0**-20 / 448.0**2
