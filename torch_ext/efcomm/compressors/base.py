"""The compressor interface: two fused ops per compressor, and the registry.

A compressor is a frozen dataclass of its parameters (hashable, with a repr that names every
parameter: ranks compare it to check that they agree). It knows its fixed message size for
a bucket (so one all-gather moves every rank's message), whether it is unbiased
(E[C(x)] = x, variance ``omega``) and/or contractive (E||C(x) - x||^2 <= (1 - alpha)
||x||^2), and its two ops, the same for every compressor family:

    message = c.encode_(a, b, ctx, scale)          # c = C(a - b) (C(a) without b); b += scale * c
    c.decode_add_(h, gathered, ctx, scale, weights)  # h += scale (1/n) sum_j C_j, rank order
                                                     # (with weights: scale sum_j w_j C_j)

``b += scale * c`` leaves ``b`` exactly as ``decode_add_(b, message[None], scale=scale)``
would. ``weights`` is a float32 tensor on ``h``'s device, one per gathered row. ``ctx``
(:class:`Context`) keys the random streams: Rand-k indices by (seed, step, bucket), shared
by every rank; stochastic rounding by (seed, step, bucket, rank); it also carries the
bucket's threshold Top-k hint.

Adding a compressor touches its own file and one registration: a class with the
``@register`` decorator, imported in ``efcomm/compressors/__init__.py``. Methods never ask
which compressor they have.
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor

COMPRESSORS: list = []  # every registered compressor class, in registration order


def register(cls):
    """Adds a compressor class to :data:`COMPRESSORS` (and so to ``efcomm``'s namespace)."""
    COMPRESSORS.append(cls)
    return cls


@dataclass(frozen=True)
class Context:
    """Where an encode happens: the seed of the run, the bucket's step count, the bucket's
    id and the rank (every rank passes the same seed, step and bucket), and the bucket's
    hint for compressors that keep one between steps (:meth:`Compressor.new_hint`)."""

    seed: int = 0
    step: int = 0
    bucket: int = 0
    rank: int = 0
    hint: Optional[Tensor] = field(default=None, compare=False)


class Compressor:
    """Base class of every compressor (see the module docstring)."""

    unbiased: ClassVar[bool] = False
    # The name under which a bucket keeps this compressor's hint (None: no hint).
    hint_key: ClassVar[Optional[str]] = None

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

    def error_bound(self, numel: int) -> Optional[float]:
        """B with ||C(x) - x||^2 <= B ||x||^2 for every x (1 - alpha for a contractive compressor;
        B >= 1 for one that is not contractive but never errs by more than a fixed multiple of its
        input, as ChunkTopK), or None."""
        alpha = self.alpha(numel)
        return None if alpha is None else 1.0 - alpha

    @property
    def bounded(self) -> bool:
        """An error bound for every bucket size (what classic EF accepts; see Method.check_compressor)."""
        return all(self.error_bound(d) is not None for d in (1, 2, 1024, 2**20, 2**31 - 1))

    def message_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        raise NotImplementedError

    def encode_(self, a: Tensor, b: Optional[Tensor], ctx: Context, scale: float = 1.0) -> Tensor:
        raise NotImplementedError

    def decode_add_(
        self, h: Tensor, gathered: Tensor, ctx: Context, scale: float = 1.0, weights: Optional[Tensor] = None
    ) -> None:
        raise NotImplementedError

    def nonfinite_in(self, gathered: Tensor, numel: int, dtype: torch.dtype) -> Optional[Tensor]:
        """A 0-dim bool tensor, true when the gathered messages carry inf or NaN, read from the
        small part of the messages that shows it (their values, or their block headers); None
        when there is no such part (the caller checks the decoded result instead)."""
        return None

    def new_hint(self, device: torch.device) -> Optional[Tensor]:
        """A fresh hint for a bucket (None: the compressor keeps none)."""
        return None

    def scaled(self) -> "Scaled":
        """C / (omega + 1): contractive with alpha = 1 / (omega + 1) (unbiased compressors only)."""
        if not self.unbiased:
            raise ValueError(f"efcomm: {self!r} is not unbiased; only unbiased compressors have a scaled variant")
        return Scaled(self)

    def bits_per_entry(self, numel: int, dtype: torch.dtype) -> float:
        """Bits on the wire per entry of a bucket of ``numel`` entries (message included whole)."""
        return 8.0 * self.message_nbytes(numel, dtype) / numel


@register
@dataclass(frozen=True)
class Scaled(Compressor):
    """C / (omega + 1) for an unbiased C: contractive with alpha = 1 / (omega + 1). Same
    message as C; the factor scales the state update and the decode."""

    inner: Compressor

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Compressor) or not self.inner.unbiased:
            raise ValueError(f"efcomm: Scaled needs an unbiased compressor; got {self.inner!r}")

    def alpha(self, numel):
        return 1.0 / (self.inner.omega(numel) + 1.0)

    def message_nbytes(self, numel, dtype):
        return self.inner.message_nbytes(numel, dtype)

    def encode_(self, a, b, ctx, scale=1.0):
        return self.inner.encode_(a, b, ctx, scale * self.alpha(a.numel()))

    def nonfinite_in(self, gathered, numel, dtype):
        return self.inner.nonfinite_in(gathered, numel, dtype)

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        self.inner.decode_add_(h, gathered, ctx, scale * self.alpha(h.numel()), weights)


@dataclass(frozen=True)
class Codec:
    """A compressor bound to one bucket at one step: what a method's encode and decode call."""

    compressor: Compressor
    numel: int
    dtype: torch.dtype
    ctx: Context = Context()

    @property
    def nbytes(self) -> int:
        return self.compressor.message_nbytes(self.numel, self.dtype)

    def encode_(self, a: Tensor, b: Optional[Tensor] = None, scale: float = 1.0) -> Tensor:
        """c = C(a - b) (or C(a)); b += scale * c; returns the message of c."""
        return self.compressor.encode_(a, b, self.ctx, scale)

    def decode_add_(self, h: Tensor, gathered: Tensor, scale: float = 1.0, weights: Optional[Tensor] = None) -> None:
        """h += scale (1/rows) sum_j C_j over the gathered rows (with weights: scale sum_j w_j C_j)."""
        self.compressor.decode_add_(h, gathered, self.ctx, scale, weights)

    def nonfinite_in(self, gathered: Tensor) -> Optional[Tensor]:
        return self.compressor.nonfinite_in(gathered, self.numel, self.dtype)


# ---- helpers of the compressor files ----------------------------------------------------


def check_ratio_k(name: str, ratio, k) -> None:
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 < ratio <= 1.0):
        raise ValueError(f"efcomm: {name} ratio ({ratio!r}) must be a number in (0, 1]")
    if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"efcomm: {name} k ({k!r}) must be a positive int")


def k_for(ratio: float, k: Optional[int], numel: int) -> int:
    """Entries kept of ``numel``: ``k`` when given, else ceil(ratio * numel); at least 1."""
    chosen = k if k is not None else math.ceil(ratio * numel)
    return max(1, min(numel, chosen))


def check_block(name: str, block) -> None:
    if not (isinstance(block, int) and not isinstance(block, bool) and 32 <= block <= 8192 and block % 32 == 0):
        raise ValueError(f"efcomm: {name} block ({block!r}) must be a multiple of 32 in [32, 8192]")


def values_nonfinite(gathered: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """Whether the first ``count`` values (of ``dtype``) of any gathered message are non-finite."""
    values = gathered[:, : count * dtype.itemsize].view(dtype)
    return ~torch.isfinite(values).all()
