"""Top-k: keep the entries of largest magnitude of each bucket."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

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

    ``value_dtype`` (None: the bucket's dtype; for float32 buckets also ``torch.bfloat16`` or
    ``torch.float16``; a 16-bit bucket keeps its own dtype, already as narrow) and ``index_bits`` (32, or 16: offsets within chunks of 65536 entries and
    a count per chunk) choose a narrower message: with bfloat16 values and 16-bit indices, about
    4 bytes per kept entry instead of 8. The selection is unchanged; the values are rounded, and
    the methods keep the rounding error (EF21's h_i adds the value as sent).
    """

    ratio: float = 0.01
    k: Optional[int] = None
    threshold: bool = False
    value_dtype: Optional[torch.dtype] = None
    index_bits: int = 32
    hint_key = "topk_threshold"

    def __post_init__(self) -> None:
        check_ratio_k("TopK", self.ratio, self.k)
        if not isinstance(self.threshold, bool):
            raise ValueError(f"efcomm: TopK threshold ({self.threshold!r}) must be a bool")
        if self.value_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"efcomm: TopK value_dtype ({self.value_dtype!r}) must be None, float32, bfloat16 or float16"
            )
        if self.index_bits not in (32, 16) or isinstance(self.index_bits, bool):
            raise ValueError(f"efcomm: TopK index_bits ({self.index_bits!r}) must be 32 or 16")

    def _values(self, dtype: torch.dtype) -> Optional[torch.dtype]:
        """The message's value dtype for a bucket of ``dtype`` when it differs (None: the
        bucket's own): a narrower one only for float32 buckets; a 16-bit bucket sends its own
        dtype whatever value_dtype says (the op takes no wider values than the tensor's)."""
        return self.value_dtype if self.value_dtype not in (None, dtype) and dtype == torch.float32 else None

    def _format(self, dtype: torch.dtype) -> dict:
        return {"value_dtype": self._values(dtype), "index_bits": self.index_bits}

    def k_for(self, numel: int) -> int:
        """Number of entries kept of a bucket of ``numel`` elements (at least 1)."""
        return k_for(self.ratio, self.k, numel)

    def alpha(self, numel: int) -> float:
        return self.k_for(numel) / numel

    def message_nbytes(self, numel, dtype):
        family = "topk16" if self.index_bits == 16 else "topk"
        return ops.message_nbytes(family, numel, self._values(dtype) or dtype, k=self.k_for(numel))

    def new_hint(self, device):
        return ops.topk_threshold_hint(device) if self.threshold else None

    def encode_(self, a, b, ctx, scale=1.0):
        hint = ctx.hint if self.threshold else None
        return ops.topk_encode_(a, b, self.k_for(a.numel()), scale, hint, **self._format(a.dtype))

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        ops.topk_decode_add_(h, gathered, self.k_for(h.numel()), scale, weights, **self._format(h.dtype))

    def nonfinite_in(self, gathered, numel, dtype):
        # inf/NaN rank first: always sent. The compact layout starts with its counts. The values
        # are read in the dtype on the wire (_values), not value_dtype: a 16-bit bucket sends its
        # own (an fp16 inf read as bf16 is a finite number).
        start = 4 * math.ceil(numel / 65536) if self.index_bits == 16 else 0
        return values_nonfinite(gathered[:, start:], self.k_for(numel), self._values(dtype) or dtype)
