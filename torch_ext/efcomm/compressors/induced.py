"""The induced compressor: a biased compressor plus an unbiased one of its residual."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Compressor, register


@register
@dataclass(frozen=True)
class Induced(Compressor):
    """The induced compressor (Horvath & Richtarik 2020, "A Better Alternative to Error
    Feedback for Communication-Efficient Distributed Learning", arXiv 2006.11077):
    C(x) = C1(x) + C2(x - C1(x)) with C1 contractive (alpha_1; e.g. Top-k) and C2 unbiased
    (omega_2). Unbiased with omega = omega_2 (1 - alpha_1) (their C1 in B(delta), C2 in
    U(omega) gives U(omega (delta - 1) / delta), alpha_1 = 1 / delta). One message: C1's,
    then C2's."""

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

    def encode_(self, a, b, ctx, scale=1.0):
        d = a.reshape(-1) if b is None else a.reshape(-1) - b.reshape(-1)  # rounded to a's dtype
        c1 = torch.zeros_like(d)
        first = self.biased.encode_(d, c1, ctx)  # c1 = C1(d)
        second = self.unbiased_part.encode_(d, c1, ctx)  # the message of C2(d - C1(d))
        message = torch.cat([first, second])
        if b is not None:  # b += scale C(d), as the decode of this message adds it
            self.decode_add_(b.view(-1), message.unsqueeze(0), ctx, scale)
        return message

    def decode_add_(self, h, gathered, ctx, scale=1.0, weights=None):
        split = self.biased.message_nbytes(h.numel(), h.dtype)
        self.biased.decode_add_(h, gathered[:, :split].contiguous(), ctx, scale, weights)
        self.unbiased_part.decode_add_(h, gathered[:, split:].contiguous(), ctx, scale, weights)
