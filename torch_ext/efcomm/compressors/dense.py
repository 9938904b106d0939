"""Dense messages: every value (Identity), or every value clipped in norm (Clip)."""

import math
from dataclasses import dataclass

from .. import ops
from .base import Compressor, register, values_nonfinite


class DenseMessage(Compressor):
    """The values of the bucket, padded to 4 bytes (efcomm.ops.dense_encode_)."""

    def _clip(self):
        return None

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("dense", numel, dtype)

    def encode_(self, a, b, ctx, scale=1.0):
        return ops.dense_encode_(a, b, self._clip(), scale)

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        ops.dense_decode_add_(h, gathered, scale, weights)

    def nonfinite_in(self, gathered, numel, dtype):
        return values_nonfinite(gathered, numel, dtype)


@register
@dataclass(frozen=True)
class Identity(DenseMessage):
    """No compression: the message is the bucket's values (omega = 0, alpha = 1)."""

    unbiased = True

    def omega(self, numel):
        return 0.0


@register
@dataclass(frozen=True)
class Clip(DenseMessage):
    """Clipping, the compressor of Clip21 (Khirirat et al. 2023, arXiv 2305.18929):
    min(1, tau / ||x||) x, a dense message of norm at most tau. Contractive only on the set
    the paper's analysis keeps it on, so the other error-feedback methods do not take it."""

    tau: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and not isinstance(self.tau, bool) and 0.0 < self.tau < math.inf):
            raise ValueError(f"efcomm: Clip tau ({self.tau!r}) must be positive and finite")

    def _clip(self):
        return float(self.tau)
