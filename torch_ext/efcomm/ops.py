"""Typed Python wrappers of the `torch.ops.efcomm` ops, with fake kernels for torch.compile.

The ops are declared once in csrc/schemas.cpp; the CPU implementation (csrc/cpu_ops.cpp)
is the reference that the CUDA implementation is tested against.
"""
from typing import Optional

import torch
from torch import Tensor

from . import _lib  # noqa: F401  (registers the ops)

__all__ = [
    "topk",
    "topk_encode",
    "topk_threshold_hint",
    "ef_topk_encode_",
    "ef21_topk_encode_",
    "ef21_sgdm_topk_encode_",
    "econtrol_topk_encode_",
    "topk_decode_add_",
    "motef_track_",
    "topk_message_nbytes",
    "clip21_encode_",
    "dense_decode_add_",
    "lag_encode_",
    "lazy_trigger",
    "adacgd_choose",
    "quantize",
    "quant_decode_add_",
    "quant_message_nbytes",
    "ef21_quantize_",
    "randk_indices",
    "randk_encode",
    "randk_decode_add_",
]


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


def topk_encode(x: Tensor, k: int, threshold: Optional[Tensor] = None) -> Tensor:
    """The fixed-size message of ``TopK(x)`` (values, then int32 indices); no state."""
    return torch.ops.efcomm.topk_encode.default(x, k, threshold)


def ef_topk_encode_(g: Tensor, e: Tensor, k: int, threshold: Optional[Tensor] = None) -> Tensor:
    """One classic error-feedback step with Top-k: ``e = g + e``, ``c = TopK(e)``, ``e -= c``.

    ``e`` is updated in place; returns the message of ``c``.
    """
    return torch.ops.efcomm.ef_topk_encode_.default(g, e, k, threshold)


def ef21_topk_encode_(g: Tensor, h_local: Tensor, k: int, threshold: Optional[Tensor] = None) -> Tensor:
    """One EF21 worker step with Top-k: ``c = TopK(g - h_local)``, ``h_local += c`` in place.

    Returns the fixed-size uint8 message holding ``c`` (values, then int32 indices; layout
    in csrc/message_layout.h, size :func:`topk_message_nbytes`).
    """
    return torch.ops.efcomm.ef21_topk_encode_.default(g, h_local, k, threshold)


def ef21_sgdm_topk_encode_(
    g: Tensor, v: Tensor, h_local: Tensor, k: int, eta: float, threshold: Optional[Tensor] = None
) -> Tensor:
    """One EF21-SGDM worker step: ``v = (1 - eta) v + eta g``, ``c = TopK(v - h_local)``,
    ``h_local += c`` (``v`` and ``h_local`` in place); returns the message of ``c``."""
    return torch.ops.efcomm.ef21_sgdm_topk_encode_.default(g, v, h_local, k, eta, threshold)


def econtrol_topk_encode_(
    g: Tensor, e: Tensor, h_local: Tensor, k: int, eta: float, threshold: Optional[Tensor] = None
) -> Tensor:
    """One EControl worker step: ``delta = TopK(eta e + g - h_local)``,
    ``e += g - h_local - delta``, ``h_local += delta`` (in place); returns the message of delta."""
    return torch.ops.efcomm.econtrol_topk_encode_.default(g, e, h_local, k, eta, threshold)


def topk_decode_add_(h: Tensor, gathered: Tensor, k: int, weights: Optional[list[float]] = None) -> None:
    """``h += (1/n) * sum_j c_j`` over the ``[n, message_bytes]`` gathered messages, in place;
    with ``weights`` (one per rank), ``h += sum_j weights[j] * c_j``.

    Sums in rank order without atomics, so every rank computes the same bits.
    """
    torch.ops.efcomm.topk_decode_add_.default(h, gathered, k, weights)


def clip21_encode_(g: Tensor, h_local: Tensor, tau: float) -> Tensor:
    """One Clip21 worker step: ``c = min(1, tau / ||g - h_local||) (g - h_local)``,
    ``h_local += c`` in place; returns the dense message of ``c`` (its values, padded to 4 bytes)."""
    return torch.ops.efcomm.clip21_encode_.default(g, h_local, tau)


def dense_decode_add_(h: Tensor, gathered: Tensor, world_size: Optional[int] = None) -> None:
    """``h += (1/n) * sum_j c_j`` over gathered dense messages (one per row), in rank order;
    n is ``world_size`` when given (lazy methods gather only the senders' rows), else the rows."""
    torch.ops.efcomm.dense_decode_add_.default(h, gathered, world_size)


def lag_encode_(g: Tensor, h_local: Tensor) -> Tensor:
    """LAG's message: ``d = g - h_local``, ``h_local += d`` in place; returns the dense message of d."""
    return torch.ops.efcomm.lag_encode_.default(g, h_local)


def lazy_trigger(g: Tensor, h_local: Tensor, y: Tensor, zeta: float) -> Tensor:
    """The 3PC trigger ``||g - h_local||^2 > zeta ||g - y||^2``, a 0-dim bool tensor on g's device."""
    return torch.ops.efcomm.lazy_trigger.default(g, h_local, y, zeta)


def topk_message_nbytes(k: int, dtype: torch.dtype) -> int:
    """Byte length of a Top-k message of ``k`` values of ``dtype``."""
    return torch.ops.efcomm.topk_message_nbytes.default(k, dtype)


def motef_track_(g: Tensor, M: Tensor, V: Tensor, G: Tensor, G_mean: Tensor, lam: float, gamma: float) -> None:
    """MoTEF's momentum and tracking step, in place on ``M`` and ``V`` (efcomm.methods.MoTEF):
    ``s = lam (g - M)``, ``M += s``, ``V += s + gamma (G_mean - G)``, per entry in float32
    with each operation rounded on its own (the order in csrc/ops.h)."""
    torch.ops.efcomm.motef_track_.default(g, M, V, G, G_mean, lam, gamma)


@torch.library.register_fake("efcomm::motef_track_")
def _motef_track_fake(g: Tensor, M: Tensor, V: Tensor, G: Tensor, G_mean: Tensor, lam: float, gamma: float) -> None:
    return None


@torch.library.register_fake("efcomm::topk")
def _topk_fake(x: Tensor, k: int, threshold: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    torch._check(1 <= k <= x.numel(), lambda: f"topk: k ({k}) must be in [1, {x.numel()}]")
    return x.new_empty((k,)), x.new_empty((k,), dtype=torch.int32)


@torch.library.register_fake("efcomm::topk_encode")
def _topk_encode_fake(x: Tensor, k: int, threshold: Optional[Tensor] = None) -> Tensor:
    torch._check(1 <= k <= x.numel(), lambda: f"topk_encode: k ({k}) must be in [1, {x.numel()}]")
    return x.new_empty((topk_message_nbytes(k, x.dtype),), dtype=torch.uint8)


@torch.library.register_fake("efcomm::ef_topk_encode_")
def _ef_topk_encode_fake(g: Tensor, e: Tensor, k: int, threshold: Optional[Tensor] = None) -> Tensor:
    torch._check(g.shape == e.shape, lambda: "ef_topk_encode_: g and e differ in shape")
    return g.new_empty((topk_message_nbytes(k, g.dtype),), dtype=torch.uint8)


@torch.library.register_fake("efcomm::ef21_topk_encode_")
def _ef21_topk_encode_fake(g: Tensor, h_local: Tensor, k: int, threshold: Optional[Tensor] = None) -> Tensor:
    torch._check(g.shape == h_local.shape, lambda: "ef21_topk_encode_: g and h_local differ in shape")
    return g.new_empty((topk_message_nbytes(k, g.dtype),), dtype=torch.uint8)


@torch.library.register_fake("efcomm::ef21_sgdm_topk_encode_")
def _ef21_sgdm_topk_encode_fake(
    g: Tensor, v: Tensor, h_local: Tensor, k: int, eta: float, threshold: Optional[Tensor] = None
) -> Tensor:
    return g.new_empty((topk_message_nbytes(k, g.dtype),), dtype=torch.uint8)


@torch.library.register_fake("efcomm::econtrol_topk_encode_")
def _econtrol_topk_encode_fake(
    g: Tensor, e: Tensor, h_local: Tensor, k: int, eta: float, threshold: Optional[Tensor] = None
) -> Tensor:
    return g.new_empty((topk_message_nbytes(k, g.dtype),), dtype=torch.uint8)


@torch.library.register_fake("efcomm::clip21_encode_")
def _clip21_encode_fake(g: Tensor, h_local: Tensor, tau: float) -> Tensor:
    nbytes = (g.numel() * g.element_size() + 3) // 4 * 4
    return g.new_empty((nbytes,), dtype=torch.uint8)


@torch.library.register_fake("efcomm::dense_decode_add_")
def _dense_decode_add_fake(h: Tensor, gathered: Tensor, world_size: Optional[int] = None) -> None:
    return None


@torch.library.register_fake("efcomm::lag_encode_")
def _lag_encode_fake(g: Tensor, h_local: Tensor) -> Tensor:
    return _clip21_encode_fake(g, h_local, 1.0)


def adacgd_choose(g: Tensor, h_local: Tensor, y: Tensor, ks: list[int], zeta: float) -> Tensor:
    """AdaCGD's choice among Top-k rungs ``ks`` (ascending): 0 (silent), or the 1-based
    cheapest rung whose error ``||d - TopK(d)||^2`` (d = g - h_local) is within
    ``zeta ||g - y||^2``, else the last; a 0-dim int32 tensor."""
    return torch.ops.efcomm.adacgd_choose.default(g, h_local, y, ks, zeta)


@torch.library.register_fake("efcomm::adacgd_choose")
def _adacgd_choose_fake(g: Tensor, h_local: Tensor, y: Tensor, ks: list[int], zeta: float) -> Tensor:
    return g.new_empty((), dtype=torch.int32)


@torch.library.register_fake("efcomm::lazy_trigger")
def _lazy_trigger_fake(g: Tensor, h_local: Tensor, y: Tensor, zeta: float) -> Tensor:
    return g.new_empty((), dtype=torch.bool)


@torch.library.register_fake("efcomm::topk_decode_add_")
def _topk_decode_add_fake(h: Tensor, gathered: Tensor, k: int, weights: Optional[list[float]] = None) -> None:
    return None


def quantize(
    x: Tensor, scheme: str, levels: int, block: int, stochastic: bool, seed: int, step: int, bucket: int, rank: int
) -> Tensor:
    """The blockwise quantized message of ``x`` (uint8; layout in csrc/message_layout.h).

    ``scheme``: ``"qsgd"`` (``levels`` = s), ``"natural"``, ``"sign"``, ``"int8"`` or ``"fp8"``
    (rules in kernels/quant_codec.h); ``block`` entries share one 4-byte header (a multiple of 32).
    Stochastic rounding draws from Philox keyed by ``seed`` and (``step``, ``bucket``, ``rank``),
    so a run is reproducible and ranks draw independently.
    """
    return torch.ops.efcomm.quantize.default(x, scheme, levels, block, stochastic, seed, step, bucket, rank)


def ef21_quantize_(
    g: Tensor,
    h_local: Tensor,
    scheme: str,
    levels: int,
    block: int,
    stochastic: bool,
    seed: int,
    step: int,
    bucket: int,
    rank: int,
) -> Tensor:
    """EF21's worker step with a quantizer, in one pass: ``d = g - h_local`` (rounded to g's
    dtype, never materialised on CUDA), the message of ``Q(d)`` as :func:`quantize`, and
    ``h_local += Q(d)`` in place with the values the codes decode to."""
    return torch.ops.efcomm.ef21_quantize_.default(g, h_local, scheme, levels, block, stochastic, seed, step, bucket, rank)


def quant_decode_add_(
    h: Tensor,
    gathered: Tensor,
    scheme: str,
    levels: int,
    block: int,
    scale: float = 1.0,
    weights: Optional[list[float]] = None,
) -> None:
    """``h += scale * (1/n) sum_j Q_j`` over the ``[n, nbytes]`` gathered messages, in rank
    order without atomics (every rank computes the same bits); with ``weights`` (one per row),
    ``h += scale * sum_j weights[j] Q_j``."""
    torch.ops.efcomm.quant_decode_add_.default(h, gathered, scheme, levels, block, scale, weights)


def quant_message_nbytes(numel: int, scheme: str, levels: int, block: int) -> int:
    """Byte length of a quantized message of ``numel`` entries."""
    return torch.ops.efcomm.quant_message_nbytes.default(numel, scheme, levels, block)


def randk_indices(x: Tensor, k: int, seed: int, step: int, bucket: int, window: bool = False) -> Tensor:
    """The ``k`` Rand-k indices (int64, message order) for a tensor like ``x``, the same on
    every rank: keyed by (``seed``, ``step``, ``bucket``), never by the rank. ``window``: k
    consecutive entries from a uniform offset (wrapping); else k distinct uniform entries,
    ascending."""
    return torch.ops.efcomm.randk_indices.default(x, k, seed, step, bucket, window)


def randk_encode(x: Tensor, k: int, seed: int, step: int, bucket: int, window: bool = False) -> Tensor:
    """The Rand-k message of ``x``: the values at :func:`randk_indices` (no indices on the wire)."""
    return torch.ops.efcomm.randk_encode.default(x, k, seed, step, bucket, window)


def randk_decode_add_(
    h: Tensor,
    gathered: Tensor,
    k: int,
    seed: int,
    step: int,
    bucket: int,
    window: bool = False,
    scale: float = 1.0,
    weights: Optional[list[float]] = None,
) -> None:
    """``h[idx] += scale * (1/n) sum_j v_j`` (or ``scale * sum_j weights[j] v_j``) over the
    gathered Rand-k messages, in rank order."""
    torch.ops.efcomm.randk_decode_add_.default(h, gathered, k, seed, step, bucket, window, scale, weights)


@torch.library.register_fake("efcomm::quantize")
def _quantize_fake(x, scheme, levels, block, stochastic, seed, step, bucket, rank):
    return x.new_empty((quant_message_nbytes(x.numel(), scheme, levels, block),), dtype=torch.uint8)


@torch.library.register_fake("efcomm::quant_decode_add_")
def _quant_decode_add_fake(h, gathered, scheme, levels, block, scale=1.0, weights=None):
    return None


@torch.library.register_fake("efcomm::randk_indices")
def _randk_indices_fake(x, k, seed, step, bucket, window):
    torch._check(1 <= k <= x.numel(), lambda: f"randk_indices: k ({k}) must be in [1, {x.numel()}]")
    return x.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("efcomm::randk_encode")
def _randk_encode_fake(x, k, seed, step, bucket, window):
    torch._check(1 <= k <= x.numel(), lambda: f"randk_encode: k ({k}) must be in [1, {x.numel()}]")
    return x.new_empty(((k * x.element_size() + 3) // 4 * 4,), dtype=torch.uint8)


@torch.library.register_fake("efcomm::randk_decode_add_")
def _randk_decode_add_fake(h, gathered, k, seed, step, bucket, window, scale=1.0, weights=None):
    return None


@torch.library.register_fake("efcomm::ef21_quantize_")
def _ef21_quantize_fake(g, h_local, scheme, levels, block, stochastic, seed, step, bucket, rank):
    torch._check(g.shape == h_local.shape, lambda: "ef21_quantize_: g and h_local differ in shape")
    return g.new_empty((quant_message_nbytes(g.numel(), scheme, levels, block),), dtype=torch.uint8)
