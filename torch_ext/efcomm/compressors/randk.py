"""Rand-k: keep k entries chosen at random, from the run's seed."""

from dataclasses import dataclass
from typing import Optional

from .. import ops
from .base import Compressor, check_ratio_k, k_for, register, values_nonfinite


@register
@dataclass(frozen=True)
class RandK(Compressor):
    """Keep k entries chosen at random (Stich, Cordonnier, Jaggi 2018, arXiv 1809.07599),
    keyed by the run's seed, the bucket and its step.

    ``shared=True`` (default): the same indices on every rank, so the message holds the k
    values only, and the mean of the ranks' messages is the Rand-k of the mean.
    ``shared=False``: each rank draws its own indices (keyed by its rank too), and sends them
    (the Top-k message layout: k values and k int32 indices): the independent compressors per
    worker that the analyses of DCSGD and of induced compressors assume (Horvath & Richtarik
    2020, arXiv 2006.11077), at twice the bytes.
    ``window=True``: k consecutive entries from a uniform offset, wrapping (coalesced reads;
    every entry is still kept with probability k/d). ``unbiased=False``: contractive,
    alpha = k/d; ``unbiased=True``: the values count d/k times, omega = d/k - 1.
    """

    ratio: float = 0.01
    k: Optional[int] = None
    window: bool = False
    unbiased: bool = False  # type: ignore[misc]  (a field here, a ClassVar elsewhere)
    shared: bool = True

    def __post_init__(self) -> None:
        check_ratio_k("RandK", self.ratio, self.k)
        for name in ("window", "unbiased", "shared"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"efcomm: RandK {name} ({getattr(self, name)!r}) must be a bool")

    def k_for(self, numel: int) -> int:
        return k_for(self.ratio, self.k, numel)

    def omega(self, numel):
        return numel / self.k_for(numel) - 1.0 if self.unbiased else None

    def alpha(self, numel):
        if self.unbiased:
            return super().alpha(numel)
        return self.k_for(numel) / numel

    def _factor(self, numel: int) -> float:
        return numel / self.k_for(numel) if self.unbiased else 1.0

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("randk" if self.shared else "topk", numel, dtype, k=self.k_for(numel))

    def encode_(self, a, b, ctx, scale=1.0):
        k = self.k_for(a.numel())
        rank = None if self.shared else ctx.rank
        return ops.randk_encode_(
            a, b, k, ctx.seed, ctx.step, ctx.bucket, self.window, scale * self._factor(a.numel()), rank
        )

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        k = self.k_for(h.numel())
        factor = scale * self._factor(h.numel())
        if self.shared:
            ops.randk_decode_add_(h, gathered, k, ctx.seed, ctx.step, ctx.bucket, self.window, factor, weights)
        else:  # the indices travel: the Top-k decode
            ops.topk_decode_add_(h, gathered, k, factor, weights)

    def nonfinite_in(self, gathered, numel, dtype):
        # Only the sampled entries travel: an inf elsewhere stays in the state and is seen
        # the step it is sampled.
        return values_nonfinite(gathered, self.k_for(numel), dtype)
