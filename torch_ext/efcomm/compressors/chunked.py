"""Chunked Top-k with few-bit values: SparseLoCo's compressor (more kept entries per byte)."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import ops
from .base import Compressor, check_ratio_k, register

CHUNKS = tuple(2**p for p in range(5, 13))  # the chunk sizes the ops accept: 32 .. 4096
BITS = (2, 4, 8)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@register
@dataclass(frozen=True)
class ChunkTopK(Compressor):
    """Top-k per chunk with ``bits``-bit values (Sarfi, Therien, Lidin, Belilovsky 2025,
    "Communication Efficient LLM Pre-training with SparseLoCo", arXiv 2508.15706): the bucket is
    cut into chunks of ``chunk`` entries (the last may be shorter), each keeping its k_c =
    min(k, length) entries of largest magnitude, ``k`` per chunk when given, else
    ``ceil(ratio * chunk)``. Each chunk sends one float32 scale s (the largest magnitude it keeps)
    and, per kept entry, its offset (log2(chunk) = 12 bits) and a code of ``bits`` bits (2, 4 or
    8) for one of the 2^bits symmetric levels s (2q - L) / L, L = 2^bits - 1, rounded to nearest
    (2 bits: +-s, +-s/3; no zero level). The arithmetic is float32 whatever the bucket's dtype
    (kernels/chunk_topk_rule.h), the layout kernels/wire_layout.h: at ``ratio=0.02`` and 2 bits,
    148 bytes per 4096 entries (1.8 bytes per kept entry; Top-k's compact layout takes 4).

    Biased. The error of a chunk is its unsent part plus at most (k_c - 1) s^2 / L^2 from the
    rounding (the largest entry is sent exactly), so ||C(x) - x||^2 <= B ||x||^2 with
    B = max(rho, 1 - k_c (1 - rho) / n_c), rho = (k_c - 1) / L^2, over the chunk lengths n_c:
    contractive with alpha = min k_c (1 - rho) / n_c when k_c <= L^2 (2 bits: k <= 9; 4 bits:
    k <= 225; 8 bits: always). With more kept entries than that it is not contractive (a chunk of
    one large entry and many tiny kept ones sends each tiny one as +-s / L), only bounded: classic
    error feedback (``"ef"``, as SparseLoCo runs it) accepts it, the EF21 family does not. A chunk
    with fewer non-zero entries than k_c sends some of its zeros as +-s / L too; error feedback
    takes them back.

    ``ratio`` is a field, so a sparsity warm-up can vary it:
    ``dataclasses.replace(c, ratio=r)``.
    """

    ratio: float = 0.02
    k: Optional[int] = None
    bits: int = 2
    chunk: int = 4096

    def __post_init__(self) -> None:
        check_ratio_k("ChunkTopK", self.ratio, self.k)
        if not _is_int(self.chunk) or self.chunk not in CHUNKS:
            raise ValueError(f"efcomm: ChunkTopK chunk ({self.chunk!r}) must be a power of two in [32, 4096]")
        if not _is_int(self.bits) or self.bits not in BITS:
            raise ValueError(f"efcomm: ChunkTopK bits ({self.bits!r}) must be 2, 4 or 8")
        if self.k is not None and self.k > self.chunk:
            raise ValueError(f"efcomm: ChunkTopK k ({self.k}) exceeds the chunk ({self.chunk}); k is per chunk")

    def k_per_chunk(self) -> int:
        """Entries kept of a full chunk: ``k`` when given, else ceil(ratio * chunk), at least 1."""
        chosen = self.k if self.k is not None else math.ceil(self.ratio * self.chunk)
        return max(1, min(self.chunk, chosen))

    def _chunk_lengths(self, numel: int) -> set:
        lengths = {min(numel, self.chunk)}
        if numel > self.chunk and numel % self.chunk:
            lengths.add(numel % self.chunk)
        return lengths

    def _bounds(self, numel: int) -> list:
        """(alpha or None, B) of each chunk length of a bucket of ``numel`` (the class docstring)."""
        levels_sq = float((2**self.bits - 1) ** 2)
        out = []
        for n in self._chunk_lengths(numel):
            kept = min(self.k_per_chunk(), n)
            rho = (kept - 1) / levels_sq
            alpha = kept * (1.0 - rho) / n if rho < 1.0 else None
            out.append((alpha, max(rho, 1.0 - kept * (1.0 - rho) / n)))
        return out

    def alpha(self, numel: int) -> Optional[float]:
        alphas = [a for a, _ in self._bounds(numel)]
        return None if None in alphas else min(alphas)

    def error_bound(self, numel: int) -> float:
        return max(b for _, b in self._bounds(numel))

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("chunktopk", numel, dtype, k=self.k_per_chunk(), block=self.chunk, bits=self.bits)

    def encode_(self, a, b, ctx, scale=1.0):
        return ops.chunktopk_encode_(a, b, self.k_per_chunk(), self.chunk, self.bits, scale)

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        ops.chunktopk_decode_add_(h, gathered, self.k_per_chunk(), self.chunk, self.bits, scale, weights)

    def nonfinite_in(self, gathered, numel, dtype):
        # A chunk holding inf or NaN keeps it (it ranks first) and gets a non-finite scale.
        scales = gathered[:, : 4 * -(-numel // self.chunk)]
        return ~torch.isfinite(scales.view(torch.float32)).all()
