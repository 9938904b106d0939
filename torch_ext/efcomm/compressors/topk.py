"""Top-k: keep the entries of largest magnitude of each bucket."""
from dataclasses import dataclass
from typing import Optional

from .. import ops
from .base import Compressor, check_ratio_k, k_for, register, values_nonfinite


@register
@dataclass(frozen=True)
class TopK(Compressor):
    """Keep the entries of largest magnitude of each bucket: ``k`` of them when given, else
    ``ceil(ratio * numel)``. Biased and contractive with alpha = k / d (Stich, Cordonnier,
    Jaggi 2018, arXiv 1809.07599). Message: k values (bucket dtype), padding to 4 bytes, k
    int32 indices ascending (ties to the lower index, NaN above inf).

    ``threshold=True`` (threshold Top-k, a speed option): each bucket keeps the last step's
    k-th magnitude as a hint (in the hook's state, saved with it), and on CUDA one pass
    gathers the entries above 0.95 times it; when they number between k and 4k the
    histogram pass of the exact select is skipped, otherwise the op falls back to it. The
    selection is the exact Top-k either way (the message is the same bits as without the
    option); see ``efcomm.ops.topk``.
    """

    ratio: float = 0.01
    k: Optional[int] = None
    threshold: bool = False
    hint_key = "topk_threshold"

    def __post_init__(self) -> None:
        check_ratio_k("TopK", self.ratio, self.k)
        if not isinstance(self.threshold, bool):
            raise ValueError(f"efcomm: TopK threshold ({self.threshold!r}) must be a bool")

    def k_for(self, numel: int) -> int:
        """Number of entries kept of a bucket of ``numel`` elements (at least 1)."""
        return k_for(self.ratio, self.k, numel)

    def alpha(self, numel: int) -> float:
        return self.k_for(numel) / numel

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("topk", numel, dtype, k=self.k_for(numel))

    def new_hint(self, device):
        return ops.topk_threshold_hint(device) if self.threshold else None

    def encode_(self, a, b, ctx, scale=1.0):
        return ops.topk_encode_(a, b, self.k_for(a.numel()), scale, ctx.hint if self.threshold else None)

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        ops.topk_decode_add_(h, gathered, self.k_for(h.numel()), scale, weights)

    def nonfinite_in(self, gathered, numel, dtype):
        return values_nonfinite(gathered, self.k_for(numel), dtype)  # inf/NaN rank first: always sent
