"""Compressed SGD without error feedback, and classic error feedback."""

import torch

from .base import Method, register_method


@register_method
class DCSGD(Method):
    """``none``: compressed SGD without error feedback. c_i = C(g_i); out = (1/n) sum_j c_j.

    Converges with unbiased compressors (Khirirat et al. 2018; Horvath & Richtarik 2020,
    arXiv 2006.11077); with Top-k it can diverge (Beznosikov et al. 2020, arXiv 2002.12410,
    Example 1).
    """

    name = "none"
    dense_init = False
    needs_unbiased = True

    def init_state(self, g, g_mean, worker):
        return {}

    def encode(self, g, state, codec, worker):
        return codec.encode_(g)

    def decode(self, state, gathered, codec, g, worker):
        out = torch.zeros_like(g)
        codec.decode_add_(out, gathered)
        return out


@register_method
class EF(DCSGD):
    """``ef``: classic error feedback (Seide et al. 2014; Stich, Cordonnier, Jaggi 2018, arXiv
    1809.07599; Karimireddy et al. 2019, arXiv 1901.09847). p = g_i + e_i; c_i = C(p);
    e_i = p - c_i; out = (1/n) sum_j c_j.

    The error e_i is kept in gradient units (the optimizer's step size is applied after the
    hook), so a changing learning rate does not rescale it.
    """

    name = "ef"
    needs_unbiased = False
    accepts_bounded = True  # e = p - C(p) stays bounded; e.g. ChunkTopK, as SparseLoCo runs it
    # The errors of ranks that may no longer exist: restart from e = 0, as EF starts.
    reform = {"e": None}

    def init_state(self, g, g_mean, worker):
        return {"e": torch.zeros_like(g)}

    def encode(self, g, state, codec, worker):
        e = state["e"]
        e.add_(g)  # p = g + e
        message = codec.encode_(e)
        codec.decode_add_(e, message.unsqueeze(0), scale=-1.0)  # e = p - C(p)
        return message
