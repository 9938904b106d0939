"""Typed Python wrappers of the `torch.ops.efcomm` ops, with fake kernels for torch.compile.

The ops are declared once in csrc/schemas.cpp, with their contract in csrc/ops.h; the CPU
implementation of each family (csrc/<family>_cpu.cpp) is the reference that its CUDA
implementation is tested against.

Every compressor family exposes the same two ops:

* ``<family>_encode_(a, b, ..., scale=1.0)``: the message of ``C(d)``, ``d = a - b`` (rounded to
  a's dtype) or ``d = a`` when ``b`` is None; with ``b``, ``b += scale * C(d)`` in place at the
  entries the message carries, exactly as ``<family>_decode_add_(b, message[None], scale=scale)``
  would add it.
* ``<family>_decode_add_(h, gathered, ..., scale=1.0, weights=None)``: ``h += scale * (1/n)
  sum_j C_j`` over the ``[n, nbytes]`` gathered messages, or ``h += scale * sum_j weights[j] C_j``
  (``weights``: a float32 tensor of n values on h's device), summed in rank order without
  atomics so that every rank computes the same bits.

Sizes come from :func:`message_nbytes`. Every NaN an op writes is the canonical quiet NaN.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _lib  # noqa: F401  (registers the ops)

__all__ = [
    "topk",
    "topk_threshold_hint",
    "randk_indices",
    "topk_encode_",
    "topk_decode_add_",
    "randk_encode_",
    "randk_decode_add_",
    "quant_encode_",
    "quant_decode_add_",
    "dense_encode_",
    "dense_decode_add_",
    "chunktopk_encode_",
    "chunktopk_decode_add_",
    "message_nbytes",
    "motef_track_",
    "lazy_trigger",
    "adacgd_choose",
]


@torch.compiler.assume_constant_result
def message_nbytes(
    family: str,
    numel: int,
    dtype: torch.dtype,
    k: int = 0,
    scheme: str = "",
    levels: int = 0,
    block: int = 0,
    bits: int = 0,
) -> int:
    """Byte length of one message for a tensor of ``numel`` entries of ``dtype``: ``family``
    ``"topk"`` (k values and k int32 indices; also Rand-k with per-rank indices), ``"topk16"``
    (the compact layout: k values, 16-bit offsets, a count per chunk of 65536), ``"randk"``
    (k values), ``"dense"`` (numel values), ``"quant"`` (``scheme``, ``levels``, ``block``) or
    ``"chunktopk"`` (``k`` per chunk of ``block`` entries, ``bits`` per code; the same length for
    every dtype). The wire layouts are kernels/wire_layout.h. A pure function of its arguments:
    torch.compile evaluates it while tracing."""
    return torch.ops.efcomm.message_nbytes.default(family, numel, dtype, k, scheme, levels, block, bits)


# ---- Top-k ----


def topk(x: Tensor, k: int, threshold: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Exact Top-k by magnitude over the flattened ``x``.

    Returns ``(values, indices)``: ``values`` keep their sign and dtype, ``indices`` are
    int32 and ascending. Among equal magnitudes the lower index wins; NaN ranks above inf.

    ``threshold`` (every Top-k op takes it): threshold Top-k's hint, a float32 tensor
    ``[tau, fell_back]`` on ``x``'s device that the op reads and rewrites (start from
    :func:`topk_threshold_hint`). The result stays exact; on CUDA, when at least k and at
    most 4k entries reach ``tau``, one pass over ``x`` finds them and the histogram pass is
    skipped. The op then sets ``tau`` to 0.95 times the k-th largest magnitude, and
    ``fell_back`` to 1 when this call needed the two passes (kernels/topk_hint.h).
    """
    return torch.ops.efcomm.topk.default(x, k, threshold)


def topk_threshold_hint(device=None) -> Tensor:
    """A fresh threshold Top-k hint (no threshold yet: the first call selects in two passes)."""
    return torch.zeros(2, dtype=torch.float32, device=device)


def topk_encode_(
    a: Tensor,
    b: Optional[Tensor],
    k: int,
    scale: float = 1.0,
    threshold: Optional[Tensor] = None,
    value_dtype: Optional[torch.dtype] = None,
    index_bits: int = 32,
) -> Tensor:
    """The Top-k message of ``d`` (``a - b``, or ``a``): its k entries of largest magnitude
    (as :func:`topk`); with ``b``, ``b += scale * TopK(d)`` in place, TopK(d) as sent. EF21's
    step is ``topk_encode_(g, h_local, k)``. The message's values are ``value_dtype`` (None:
    ``a``'s dtype; for float32 also bfloat16 or float16, rounded to nearest even), its indices
    int32 (``index_bits=32``) or 16-bit offsets within chunks of 65536 entries with a count per
    chunk (``index_bits=16``, the compact layout of kernels/wire_layout.h: about 4 bytes per
    entry with bfloat16 values instead of 8)."""
    return torch.ops.efcomm.topk_encode_.default(a, b, k, scale, threshold, value_dtype, index_bits)


def topk_decode_add_(
    h: Tensor,
    gathered: Tensor,
    k: int,
    scale: float = 1.0,
    weights: Optional[Tensor] = None,
    value_dtype: Optional[torch.dtype] = None,
    index_bits: int = 32,
) -> None:
    """``h += scale * (1/n) sum_j C_j`` (or with ``weights``) over gathered Top-k messages of
    the format of :func:`topk_encode_` (``value_dtype``, ``index_bits``), in place; entries no
    message carries are left untouched."""
    torch.ops.efcomm.topk_decode_add_.default(h, gathered, k, scale, weights, value_dtype, index_bits)


# ---- Rand-k ----


def randk_indices(
    x: Tensor, k: int, seed: int, step: int, bucket: int, window: bool = False, rank: Optional[int] = None
) -> Tensor:
    """The ``k`` Rand-k indices (int64, message order) for a tensor like ``x``, keyed by
    (``seed``, ``step``, ``bucket``): the same on every rank, or, with ``rank``, drawn for that
    rank alone (and then ascending). ``window``: k consecutive entries from a uniform offset
    (wrapping); else k distinct uniform entries, ascending (kernels/randk_rule.h)."""
    return torch.ops.efcomm.randk_indices.default(x, k, seed, step, bucket, window, rank)


def randk_encode_(
    a: Tensor,
    b: Optional[Tensor],
    k: int,
    seed: int,
    step: int,
    bucket: int,
    window: bool = False,
    scale: float = 1.0,
    rank: Optional[int] = None,
) -> Tensor:
    """The Rand-k message of ``d`` (``a - b``, or ``a``): the values at :func:`randk_indices`
    (shared indices: no indices on the wire); with ``rank``, the rank's own indices, carried in
    the Top-k layout (decode with :func:`topk_decode_add_`). With ``b``, ``b += scale * C(d)``."""
    return torch.ops.efcomm.randk_encode_.default(a, b, k, seed, step, bucket, window, scale, rank)


def randk_decode_add_(
    h: Tensor,
    gathered: Tensor,
    k: int,
    seed: int,
    step: int,
    bucket: int,
    window: bool = False,
    scale: float = 1.0,
    weights: Optional[Tensor] = None,
) -> None:
    """``h[idx] += scale * (1/n) sum_j v_j`` (or with ``weights``) over gathered Rand-k messages
    with shared indices, in rank order."""
    torch.ops.efcomm.randk_decode_add_.default(h, gathered, k, seed, step, bucket, window, scale, weights)


# ---- quantizers ----


def quant_encode_(
    a: Tensor,
    b: Optional[Tensor],
    scheme: str,
    levels: int,
    block: int,
    stochastic: bool,
    seed: int,
    step: int,
    bucket: int,
    rank: int,
    scale: float = 1.0,
) -> Tensor:
    """The blockwise quantized message of ``d`` (``a - b``, or ``a``); with ``b``, ``b +=
    scale * Q(d)`` in place, in the same pass.

    ``scheme``: one registered in kernels/quant_schemes.h (``"qsgd"`` with ``levels`` = s,
    ``"natural"``, ``"sign"``, ``"int8"``, ``"fp8"``; rules in kernels/quant/); ``block``
    entries share one 4-byte header (a multiple of 32). Stochastic rounding draws from Philox
    keyed by ``seed`` and (``step``, ``bucket``, ``rank``), so a run is reproducible and ranks
    draw independently."""
    return torch.ops.efcomm.quant_encode_.default(
        a, b, scheme, levels, block, stochastic, seed, step, bucket, rank, scale
    )


def quant_decode_add_(
    h: Tensor,
    gathered: Tensor,
    scheme: str,
    levels: int,
    block: int,
    scale: float = 1.0,
    weights: Optional[Tensor] = None,
) -> None:
    """``h += scale * (1/n) sum_j Q_j`` (or with ``weights``) over gathered quantized messages."""
    torch.ops.efcomm.quant_decode_add_.default(h, gathered, scheme, levels, block, scale, weights)


# ---- dense ----


def dense_encode_(a: Tensor, b: Optional[Tensor], clip: Optional[float] = None, scale: float = 1.0) -> Tensor:
    """The dense message of ``d`` (``a - b``, or ``a``), or with ``clip`` of
    ``min(1, clip / ||d||) d`` (Clip21's); with ``b``, ``b += scale * c`` in place. LAG's step
    is ``dense_encode_(g, h_local)``, Clip21's ``dense_encode_(g, h_local, clip=tau)``."""
    return torch.ops.efcomm.dense_encode_.default(a, b, clip, scale)


def dense_decode_add_(h: Tensor, gathered: Tensor, scale: float = 1.0, weights: Optional[Tensor] = None) -> None:
    """``h += scale * (1/n) sum_j c_j`` (or with ``weights``) over gathered dense messages."""
    torch.ops.efcomm.dense_decode_add_.default(h, gathered, scale, weights)


# ---- chunked Top-k ----


def chunktopk_encode_(a: Tensor, b: Optional[Tensor], k: int, chunk: int, bits: int, scale: float = 1.0) -> Tensor:
    """The chunked Top-k message of ``d`` (``a - b``, or ``a``), SparseLoCo's compressor (arXiv
    2508.15706): ``d`` cut into chunks of ``chunk`` entries (a power of two in [32, 4096]; the
    last may be shorter), each keeping its ``min(k, length)`` entries of largest magnitude (NaN
    above inf, ties to the lower index) as offsets of log2(chunk) bits (12 for 4096) and
    ``bits``-bit codes (2, 4 or 8) of one float32 scale per chunk, the largest magnitude it keeps:
    the levels
    ``scale * (2q - L) / L``, L = 2^bits - 1, rounded to nearest (2 bits: +-scale, +-scale/3). With
    ``b``, ``b += scale * C(d)`` in place, C(d) as decoded. Values in float32 whatever the dtype
    (kernels/chunk_topk_rule.h; layout: kernels/wire_layout.h)."""
    return torch.ops.efcomm.chunktopk_encode_.default(a, b, k, chunk, bits, scale)


def chunktopk_decode_add_(
    h: Tensor,
    gathered: Tensor,
    k: int,
    chunk: int,
    bits: int,
    scale: float = 1.0,
    weights: Optional[Tensor] = None,
) -> None:
    """``h += scale * (1/n) sum_j C_j`` (or with ``weights``) over gathered chunked Top-k
    messages, in rank order; entries no message carries are left untouched."""
    torch.ops.efcomm.chunktopk_decode_add_.default(h, gathered, k, chunk, bits, scale, weights)


# ---- method ops ----


def motef_track_(g: Tensor, M: Tensor, V: Tensor, G: Tensor, G_mean: Tensor, lam: float, gamma: float) -> None:
    """MoTEF's momentum and tracking step, in place on ``M`` and ``V`` (efcomm.methods.MoTEF):
    ``s = lam (g - M)``, ``M += s``, ``V += s + gamma (G_mean - G)``, per entry in float32
    with each operation rounded on its own (the order in csrc/ops.h)."""
    torch.ops.efcomm.motef_track_.default(g, M, V, G, G_mean, lam, gamma)


def lazy_trigger(g: Tensor, h_local: Tensor, y: Tensor, zeta: float) -> Tensor:
    """The 3PC trigger ``||g - h_local||^2 > zeta ||g - y||^2``, a 0-dim bool tensor on g's device."""
    return torch.ops.efcomm.lazy_trigger.default(g, h_local, y, zeta)


def adacgd_choose(g: Tensor, h_local: Tensor, y: Tensor, ks: list[int], zeta: float) -> Tensor:
    """AdaCGD's choice among Top-k rungs ``ks`` (ascending): 0 (silent), or the 1-based
    cheapest rung whose error ``||d - TopK(d)||^2`` (d = g - h_local) is within
    ``zeta ||g - y||^2``, else the last; a 0-dim int32 tensor."""
    return torch.ops.efcomm.adacgd_choose.default(g, h_local, y, ks, zeta)


# ---- fake kernels (message_nbytes has no tensors: its one kernel serves fake tensors too) ----


def _check_k(op: str, k: int, numel: int) -> None:
    torch._check(1 <= k <= numel, lambda: f"{op}: k ({k}) must be in [1, {numel}]")


def _message(a: Tensor, nbytes: int) -> Tensor:
    return a.new_empty((nbytes,), dtype=torch.uint8)


@torch.library.register_fake("efcomm::topk")
def _topk_fake(x, k, threshold=None):
    _check_k("topk", k, x.numel())
    return x.new_empty((k,)), x.new_empty((k,), dtype=torch.int32)


@torch.library.register_fake("efcomm::randk_indices")
def _randk_indices_fake(x, k, seed, step, bucket, window, rank=None):
    _check_k("randk_indices", k, x.numel())
    return x.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("efcomm::topk_encode_")
def _topk_encode_fake(a, b, k, scale=1.0, threshold=None, value_dtype=None, index_bits=32):
    _check_k("topk_encode_", k, a.numel())
    family = "topk16" if index_bits == 16 else "topk"
    return _message(a, message_nbytes(family, a.numel(), value_dtype or a.dtype, k=k))


@torch.library.register_fake("efcomm::randk_encode_")
def _randk_encode_fake(a, b, k, seed, step, bucket, window, scale=1.0, rank=None):
    _check_k("randk_encode_", k, a.numel())
    return _message(a, message_nbytes("randk" if rank is None else "topk", a.numel(), a.dtype, k=k))


@torch.library.register_fake("efcomm::quant_encode_")
def _quant_encode_fake(a, b, scheme, levels, block, stochastic, seed, step, bucket, rank, scale=1.0):
    return _message(a, message_nbytes("quant", a.numel(), a.dtype, scheme=scheme, levels=levels, block=block))


@torch.library.register_fake("efcomm::dense_encode_")
def _dense_encode_fake(a, b, clip=None, scale=1.0):
    return _message(a, message_nbytes("dense", a.numel(), a.dtype))


@torch.library.register_fake("efcomm::chunktopk_encode_")
def _chunktopk_encode_fake(a, b, k, chunk, bits, scale=1.0):
    return _message(a, message_nbytes("chunktopk", a.numel(), a.dtype, k=k, block=chunk, bits=bits))


@torch.library.register_fake("efcomm::topk_decode_add_")
def _topk_decode_add_fake(h, gathered, k, scale=1.0, weights=None, value_dtype=None, index_bits=32):
    return None


@torch.library.register_fake("efcomm::randk_decode_add_")
def _randk_decode_add_fake(h, gathered, k, seed, step, bucket, window, scale=1.0, weights=None):
    return None


@torch.library.register_fake("efcomm::quant_decode_add_")
def _quant_decode_add_fake(h, gathered, scheme, levels, block, scale=1.0, weights=None):
    return None


@torch.library.register_fake("efcomm::dense_decode_add_")
def _dense_decode_add_fake(h, gathered, scale=1.0, weights=None):
    return None


@torch.library.register_fake("efcomm::chunktopk_decode_add_")
def _chunktopk_decode_add_fake(h, gathered, k, chunk, bits, scale=1.0, weights=None):
    return None


@torch.library.register_fake("efcomm::motef_track_")
def _motef_track_fake(g, M, V, G, G_mean, lam, gamma):
    return None


@torch.library.register_fake("efcomm::lazy_trigger")
def _lazy_trigger_fake(g, h_local, y, zeta):
    return g.new_empty((), dtype=torch.bool)


@torch.library.register_fake("efcomm::adacgd_choose")
def _adacgd_choose_fake(g, h_local, y, ks, zeta):
    return g.new_empty((), dtype=torch.int32)
