"""Compressors: configuration objects accepted by :func:`efcomm.register`, the methods and
the simulator.

Each compressor knows its fixed message size for a bucket (so one all-gather moves every
rank's message), whether it is unbiased (E[C(x)] = x, variance ``omega``) and/or
contractive (E||C(x) - x||^2 <= (1 - alpha) ||x||^2), and which ops encode and decode it
(definitions: ../shared/ALGORITHMS.md, "Compressors"). ``c.scaled()`` turns an unbiased
compressor into the contractive C / (omega + 1).

A compressor is used through two calls, both in rank order and bitwise identical on
every rank:

    message = c.encode(x, ctx)                       # uint8, c.message_nbytes(numel, dtype) bytes
    c.decode_add_(h, gathered, ctx)                  # h += (1/n) sum_j C_j   ([n, nbytes] rows)
    c.decode_add_(h, gathered, ctx, weights=w)       # h += sum_j w_j C_j
    c.decode_add_(h, gathered, ctx, scale=s)         # everything above times s

``ctx`` (:class:`Context`) keys the random streams: Rand-k indices by (seed, step, bucket),
shared by every rank; stochastic rounding by (seed, step, bucket, rank).
"""
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor

from . import ops


@dataclass(frozen=True)
class Context:
    """Where an encode happens: the seed of the run, the bucket's step count, the bucket's
    id and the rank. Every rank passes the same (seed, step, bucket)."""

    seed: int = 0
    step: int = 0
    bucket: int = 0
    rank: int = 0


class Compressor:
    """Base class. Subclasses are frozen dataclasses (hashable, comparable, with a repr that
    names every parameter: the hook hashes it to check that ranks agree)."""

    unbiased: ClassVar[bool] = False

    def omega(self, numel: int) -> Optional[float]:
        """Variance bound of an unbiased compressor, E||C(x) - x||^2 <= omega ||x||^2; None if biased."""
        return None

    def alpha(self, numel: int) -> Optional[float]:
        """Contraction parameter in (0, 1], or None if not contractive. An unbiased compressor
        with omega < 1 is contractive with alpha = 1 - omega."""
        omega = self.omega(numel)
        return None if omega is None or omega >= 1.0 else 1.0 - omega

    @property
    def contractive(self) -> bool:
        """Contractive for every bucket size (what EF, EF21 and their variants need)."""
        return all(self.alpha(d) is not None for d in (1, 2, 1024, 2**20, 2**31 - 1))

    def message_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        raise NotImplementedError

    def encode(self, x: Tensor, ctx: Context) -> Tensor:
        raise NotImplementedError

    def decode_add_(
        self, h: Tensor, gathered: Tensor, ctx: Context, weights: Optional[list] = None, scale: float = 1.0
    ) -> None:
        raise NotImplementedError

    def nonfinite_in(self, gathered: Tensor, numel: int, dtype: torch.dtype) -> Optional[Tensor]:
        """A 0-dim bool tensor, true when the gathered messages carry inf or NaN, read from the
        small part of the messages that shows it (their values, or their block headers); None
        when there is no such part (the caller checks the decoded result instead)."""
        return None

    def scaled(self) -> "Scaled":
        """C / (omega + 1): contractive with alpha = 1 / (omega + 1) (unbiased compressors only)."""
        if not self.unbiased:
            raise ValueError(f"efcomm: {self!r} is not unbiased; only unbiased compressors have a scaled variant")
        return Scaled(self)

    def bits_per_entry(self, numel: int, dtype: torch.dtype) -> float:
        """Bits on the wire per entry of a bucket of ``numel`` entries (message included whole)."""
        return 8.0 * self.message_nbytes(numel, dtype) / numel


def _check_ratio_k(name: str, ratio, k) -> None:
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 < ratio <= 1.0):
        raise ValueError(f"efcomm: {name} ratio ({ratio!r}) must be a number in (0, 1]")
    if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"efcomm: {name} k ({k!r}) must be a positive int")


def _k_for(ratio: float, k: Optional[int], numel: int) -> int:
    chosen = k if k is not None else math.ceil(ratio * numel)
    return max(1, min(numel, chosen))


def _values_nonfinite(gathered: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """Whether the first ``count`` values (of ``dtype``) of any gathered message are non-finite."""
    values = gathered[:, : count * torch.empty((), dtype=dtype).element_size()].view(dtype)
    return ~torch.isfinite(values).all()


def _weights(weights: Optional[list], device: torch.device) -> Optional[Tensor]:
    """The per-row weights as the float32 tensor on h's device that the decode ops take."""
    return None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class TopK(Compressor):
    """Keep the entries of largest magnitude of each bucket: ``k`` of them when given, else
    ``ceil(ratio * numel)``. Biased and contractive with alpha = k / d. Message: k values
    (bucket dtype), padding to 4 bytes, k int32 indices.

    ``threshold=True`` (threshold Top-k, a speed option): each bucket keeps the last step's
    k-th magnitude as a hint (in the hook's state, saved with it), and on CUDA one pass
    gathers the entries above 0.95 times it; when they number between k and 4k the
    histogram pass of the exact select is skipped, otherwise the op falls back to it. The
    selection is the exact Top-k either way (the message is the same bits as without the
    option); see ``efcomm.ops.topk``. AdaCGD's ladder selects without the hint.
    """

    ratio: float = 0.01
    k: Optional[int] = None
    threshold: bool = False

    def __post_init__(self) -> None:
        _check_ratio_k("TopK", self.ratio, self.k)
        if not isinstance(self.threshold, bool):
            raise ValueError(f"efcomm: TopK threshold ({self.threshold!r}) must be a bool")

    def k_for(self, numel: int) -> int:
        """Number of entries kept of a bucket of ``numel`` elements (at least 1)."""
        return _k_for(self.ratio, self.k, numel)

    def alpha(self, numel: int) -> float:
        return self.k_for(numel) / numel

    def message_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return ops.message_nbytes("topk", numel, dtype, k=self.k_for(numel))

    def encode(self, x, ctx):
        return ops.topk_encode_(x, None, self.k_for(x.numel()))

    def decode_add_(self, h, gathered, ctx, weights=None, scale=1.0):
        ops.topk_decode_add_(h, gathered, self.k_for(h.numel()), scale, _weights(weights, h.device))

    def nonfinite_in(self, gathered, numel, dtype):
        return _values_nonfinite(gathered, self.k_for(numel), dtype)  # inf/NaN rank first: always sent


@dataclass(frozen=True)
class RandK(Compressor):
    """Keep k entries chosen at random, the same on every rank (keyed by seed, step and
    bucket), so the message holds the k values only.

    ``window=False``: k distinct uniform entries; ``window=True``: k consecutive entries
    from a uniform offset, wrapping (coalesced reads; every entry is still kept with
    probability k/d). ``unbiased=False``: contractive, alpha = k/d. ``unbiased=True``: the
    values are scaled by d/k, omega = d/k - 1.
    """

    ratio: float = 0.01
    k: Optional[int] = None
    window: bool = False
    unbiased: bool = False  # type: ignore[misc]  (a field here, a ClassVar elsewhere)

    def __post_init__(self) -> None:
        _check_ratio_k("RandK", self.ratio, self.k)

    def k_for(self, numel: int) -> int:
        return _k_for(self.ratio, self.k, numel)

    def omega(self, numel):
        return numel / self.k_for(numel) - 1.0 if self.unbiased else None

    def alpha(self, numel):
        if self.unbiased:
            return super().alpha(numel)
        return self.k_for(numel) / numel

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("randk", numel, dtype, k=self.k_for(numel))

    def encode(self, x, ctx):
        return ops.randk_encode_(x, None, self.k_for(x.numel()), ctx.seed, ctx.step, ctx.bucket, self.window)

    def decode_add_(self, h, gathered, ctx, weights=None, scale=1.0):
        k = self.k_for(h.numel())
        factor = scale * (h.numel() / k) if self.unbiased else scale
        ops.randk_decode_add_(
            h, gathered, k, ctx.seed, ctx.step, ctx.bucket, self.window, factor, _weights(weights, h.device)
        )

    def nonfinite_in(self, gathered, numel, dtype):
        # Only the sampled entries travel: an inf elsewhere stays in the state and is seen
        # the step it is sampled.
        return _values_nonfinite(gathered, self.k_for(numel), dtype)

    def ef21_encode_(self, target: Tensor, h_local: Tensor, ctx: Context) -> Tensor:
        """c = C(target - h_local); h_local += c; the message of c, in one op (only the k
        selected differences are formed). Same bits as the composition."""
        k = self.k_for(target.numel())
        factor = target.numel() / k if self.unbiased else 1.0
        return ops.randk_encode_(target, h_local, k, ctx.seed, ctx.step, ctx.bucket, self.window, factor)


def _check_block(name: str, block) -> None:
    if not (isinstance(block, int) and not isinstance(block, bool) and 32 <= block <= 8192 and block % 32 == 0):
        raise ValueError(f"efcomm: {name} block ({block!r}) must be a multiple of 32 in [32, 8192]")


class _Quantizer(Compressor):
    """Blockwise quantizers over ops.quant_encode_ / ops.quant_decode_add_ (one 4-byte header per
    block of ``block`` entries, then packed codes)."""

    scheme: ClassVar[str]

    def _levels(self) -> int:
        return 0

    def _stochastic(self) -> bool:
        return True

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("quant", numel, dtype, scheme=self.scheme, levels=self._levels(), block=self.block)

    def encode(self, x, ctx):
        return ops.quant_encode_(
            x, None, self.scheme, self._levels(), self.block, self._stochastic(), ctx.seed, ctx.step, ctx.bucket, ctx.rank
        )

    def decode_add_(self, h, gathered, ctx, weights=None, scale=1.0):
        ops.quant_decode_add_(h, gathered, self.scheme, self._levels(), self.block, scale, _weights(weights, h.device))

    def nonfinite_in(self, gathered, numel, dtype):
        # A block holding inf or NaN has a non-finite header (natural: the int32 sentinel).
        headers = gathered[:, : 4 * -(-numel // self.block)]
        if self.scheme == "natural":
            return (headers.view(torch.int32) == -(2**31)).any()
        return ~torch.isfinite(headers.view(torch.float32)).all()

    def ef21_encode_(self, target: Tensor, h_local: Tensor, ctx: Context) -> Tensor:
        """c = C(target - h_local); h_local += c; the message of c, in one fused op."""
        return ops.quant_encode_(
            target, h_local, self.scheme, self._levels(), self.block, self._stochastic(),
            ctx.seed, ctx.step, ctx.bucket, ctx.rank,
        )


@dataclass(frozen=True)
class QSGD(_Quantizer):
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
        _check_block("QSGD", self.block)

    def _levels(self):
        return self.levels

    def omega(self, numel):
        b = min(self.block, numel)
        return min(b / self.levels**2, math.sqrt(b) / self.levels)


@dataclass(frozen=True)
class Natural(_Quantizer):
    """Natural compression (Horvath et al. 2019, arXiv 1905.10988): stochastic rounding of
    each entry to a neighbouring power of two. Unbiased, omega = 1/8. Wire: one byte per
    entry (sign and a 7-bit exponent offset) plus one int32 exponent base per block."""

    block: int = 1024
    scheme: ClassVar[str] = "natural"
    unbiased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_block("Natural", self.block)

    def omega(self, numel):
        return 1.0 / 8.0


@dataclass(frozen=True)
class ScaledSign(_Quantizer):
    """Scaled sign (Karimireddy et al. 2019, arXiv 1901.09847), per block:
    (||x_block||_1 / B) sign(x_j). Deterministic, biased, contractive with
    alpha = ||x||_1^2 / (B ||x||_2^2) >= 1/B (the bound reported). Wire: 1 bit per entry
    plus one float32 scale per block."""

    block: int = 1024
    scheme: ClassVar[str] = "sign"

    def __post_init__(self) -> None:
        _check_block("ScaledSign", self.block)

    def _stochastic(self):
        return False

    def alpha(self, numel):
        return 1.0 / min(self.block, numel)


class _RoundingQuantizer(_Quantizer):
    """Int8 and FP8: a per-block scale and rounding that is nearest-even (biased,
    contractive with alpha = 1 - bound) or stochastic (unbiased, omega = bound)."""

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


@dataclass(frozen=True)
class Int8(_RoundingQuantizer):
    """Blockwise int8: scale = max|x_block| / 127, codes round(x / scale) in [-127, 127].
    ``stochastic=False``: nearest-even, biased, contractive with alpha = 1 - B / (4 * 127^2).
    ``stochastic=True``: unbiased, omega = B / (4 * 127^2). Wire: 8 bits per entry plus a
    float32 scale per block."""

    block: int = 256
    stochastic: bool = False
    scheme: ClassVar[str] = "int8"

    def __post_init__(self) -> None:
        _check_block("Int8", self.block)

    def _error_bound(self, numel) -> float:
        return min(self.block, numel) / (4.0 * 127.0**2)


@dataclass(frozen=True)
class FP8(_RoundingQuantizer):
    """Blockwise fp8 e4m3 (max 448): scale = max|x_block| / 448, x / scale rounded to the
    e4m3 grid (3 mantissa bits; subnormal spacing 2^-9). ``stochastic=False``: nearest-even,
    contractive with alpha = 1 - (2^-8 + B 2^-20 / 448^2). ``stochastic=True``: unbiased with
    that omega. Wire: 8 bits per entry plus a float32 scale per block."""

    block: int = 256
    stochastic: bool = False
    scheme: ClassVar[str] = "fp8"

    def __post_init__(self) -> None:
        _check_block("FP8", self.block)

    def _error_bound(self, numel) -> float:
        return 2.0**-8 + min(self.block, numel) * 2.0**-20 / 448.0**2


@dataclass(frozen=True)
class Identity(Compressor):
    """No compression: the message is the bucket's values (omega = 0, alpha = 1)."""

    unbiased: ClassVar[bool] = True

    def omega(self, numel):
        return 0.0

    def message_nbytes(self, numel, dtype):
        return ops.message_nbytes("dense", numel, dtype)

    def encode(self, x, ctx):
        return ops.dense_encode_(x, None)

    def nonfinite_in(self, gathered, numel, dtype):
        return _values_nonfinite(gathered, numel, dtype)

    def decode_add_(self, h, gathered, ctx, weights=None, scale=1.0):
        ops.dense_decode_add_(h, gathered, scale, _weights(weights, h.device))


@dataclass(frozen=True)
class Scaled(Compressor):
    """C / (omega + 1) for an unbiased C: contractive with alpha = 1 / (omega + 1). Same
    message as C; the factor is applied when decoding."""

    inner: Compressor

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Compressor) or not self.inner.unbiased:
            raise ValueError(f"efcomm: Scaled needs an unbiased compressor; got {self.inner!r}")

    def alpha(self, numel):
        return 1.0 / (self.inner.omega(numel) + 1.0)

    def message_nbytes(self, numel, dtype):
        return self.inner.message_nbytes(numel, dtype)

    def encode(self, x, ctx):
        return self.inner.encode(x, ctx)

    def nonfinite_in(self, gathered, numel, dtype):
        return self.inner.nonfinite_in(gathered, numel, dtype)

    def decode_add_(self, h, gathered, ctx, weights=None, scale=1.0):
        self.inner.decode_add_(h, gathered, ctx, weights, scale * self.alpha(h.numel()))


@dataclass(frozen=True)
class Induced(Compressor):
    """The induced compressor (Horvath & Richtarik 2020, "A Better Alternative to Error
    Feedback for Communication-Efficient Distributed Learning", arXiv 2006.11077):
    C(x) = C1(x) + C2(x - C1(x)) with C1 contractive (alpha_1; e.g. Top-k) and C2 unbiased
    (omega_2). Unbiased with omega = omega_2 (1 - alpha_1). One message: C1's, then C2's."""

    biased: Compressor
    unbiased_part: Compressor
    unbiased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.biased, Compressor) or self.biased.alpha(1024) is None:
            raise ValueError(f"efcomm: Induced biased ({self.biased!r}) must be a contractive compressor")
        if not isinstance(self.unbiased_part, Compressor) or not self.unbiased_part.unbiased:
            raise ValueError(f"efcomm: Induced unbiased_part ({self.unbiased_part!r}) must be an unbiased compressor")

    def omega(self, numel):
        return self.unbiased_part.omega(numel) * (1.0 - self.biased.alpha(numel))

    def message_nbytes(self, numel, dtype):
        return self.biased.message_nbytes(numel, dtype) + self.unbiased_part.message_nbytes(numel, dtype)

    def encode(self, x, ctx):
        first = self.biased.encode(x, ctx)
        residual = x.detach().reshape(-1).clone()
        self.biased.decode_add_(residual, first.unsqueeze(0), ctx, weights=[-1.0])  # x - C1(x)
        return torch.cat([first, self.unbiased_part.encode(residual, ctx)])

    def decode_add_(self, h, gathered, ctx, weights=None, scale=1.0):
        split = self.biased.message_nbytes(h.numel(), h.dtype)
        self.biased.decode_add_(h, gathered[:, :split].contiguous(), ctx, weights, scale)
        self.unbiased_part.decode_add_(h, gathered[:, split:].contiguous(), ctx, weights, scale)


COMPRESSORS = (TopK, RandK, QSGD, Natural, ScaledSign, Int8, FP8, Identity, Scaled, Induced)


@dataclass(frozen=True)
class Codec:
    """A compressor bound to one bucket at one step: what a method's encode and decode call."""

    compressor: Compressor
    numel: int
    dtype: torch.dtype
    ctx: Context = Context()
    hint: Optional[Tensor] = field(default=None, compare=False)  # threshold Top-k hint (TopK(threshold=True))

    @property
    def is_topk(self) -> bool:
        """Top-k carries the threshold hint; EF and EF21 use its encode directly."""
        return type(self.compressor) is TopK

    @property
    def threshold(self) -> Optional[Tensor]:
        """The hint the Top-k ops read and update, or None (exact two-pass selection)."""
        return self.hint if self.is_topk and self.compressor.threshold else None

    @property
    def k(self) -> int:
        return self.compressor.k_for(self.numel)

    @property
    def nbytes(self) -> int:
        return self.compressor.message_nbytes(self.numel, self.dtype)

    def encode(self, x: Tensor) -> Tensor:
        if self.threshold is not None:
            return ops.topk_encode_(x, None, self.k, threshold=self.threshold)
        return self.compressor.encode(x, self.ctx)

    def decode_add_(self, h: Tensor, gathered: Tensor, weights: Optional[list] = None, scale: float = 1.0) -> None:
        self.compressor.decode_add_(h, gathered, self.ctx, weights, scale)

    def add_own_(self, h: Tensor, message: Tensor, factor: float = 1.0) -> None:
        """h += factor * C, C this rank's own message (EF21's h_i += c_i; EF's e -= c with -1)."""
        self.compressor.decode_add_(h, message.unsqueeze(0), self.ctx, scale=factor)
