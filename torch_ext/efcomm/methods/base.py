"""The method interface: the per-coordinate state each method keeps, and its step.

The step engine (efcomm.engine) drives every method, in the DDP hook and in the simulator
alike, through the same calls:

    state = method.init_state(g, g_mean, worker)            # once per bucket; g_mean comes from
                                                            # a dense exchange when dense_init
    message = method.encode(g, state, codec, worker)        # this worker's fixed-size message
    out = method.decode(state, gathered, codec, g, worker)  # after the all-gather: the
                                                            # direction the optimizer steps along

``codec`` is the compressor bound to the bucket and step (efcomm.compressors.Codec). A
method computes its target (g, v, eta e + g - h, ...) and calls the codec's two ops:
``codec.encode_(target, h_local)`` (c = C(target - h_local), h_local += c, the message of c)
and ``codec.decode_add_(h, gathered, scale, weights)``; it never asks which compressor it
has. Notation: g = g_i is this worker's gradient, n the number of workers, C the compressor
(as in the EF21 paper, Richtarik, Sokolov, Fatkhullin 2021, arXiv 2106.05203). Every state
tensor has the bucket's size and dtype.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from ..compressors import Codec, Compressor


@dataclass(frozen=True)
class Worker:
    """Who runs a method step: rank i of n."""

    rank: int
    world: int


class Method:
    name: ClassVar[str]
    dense_init: ClassVar[bool]  # the first step of a bucket is a dense all-reduce
    needs_unbiased: ClassVar[bool] = False  # converges only with an unbiased compressor
    sends_dense: ClassVar[bool] = False  # messages hold every coordinate (no compression)
    per_worker_iterates: ClassVar[bool] = False  # each worker keeps its own model (MoTEF)
    lazy: ClassVar[bool] = False  # a worker may send nothing (see efcomm.methods.lazy)
    # Also accepts a compressor that is not contractive but whose error is bounded,
    # ||C(x) - x||^2 <= B ||x||^2 with B >= 1 (Compressor.error_bound): classic EF, whose state
    # e = p - C(p) then stays within sqrt(B) ||p|| step by step (ChunkTopK with more kept entries
    # per chunk than it has levels squared, as SparseLoCo runs it). The convergence proofs assume
    # contraction; the EF21 family's state needs it, so it keeps the stricter check.
    accepts_bounded: ClassVar[bool] = False
    # Elastic resume (a checkpoint of n ranks resumed by m != n, or by other ranks): how each
    # per-rank state tensor is re-formed, as {per-rank tensor: the shared tensor it is set to,
    # or None for zeros}; tensors not named are shared by every rank and carried as saved
    # (docs/faults.md, "Elastic resume", says why each rule keeps the method sound).
    reform: ClassVar[dict] = {}

    def check_compressor(self, compressor, allow_biased: bool = False) -> None:
        """Unbiased compressors for ``none``; contractive ones for the error-feedback methods (classic
        EF: also those of bounded error, ``accepts_bounded``)."""
        if not isinstance(compressor, Compressor):
            raise TypeError(f"efcomm: compressor ({compressor!r}) must be an efcomm compressor (efcomm.TopK, ...)")
        if allow_biased:
            return
        if self.needs_unbiased and not compressor.unbiased:
            raise ValueError(
                f"efcomm: method {self.name!r} needs an unbiased compressor and {compressor!r} is biased "
                "(it may diverge; pass allow_biased=True to run it anyway, e.g. to show that)"
            )
        if self.needs_unbiased or compressor.contractive or (self.accepts_bounded and compressor.bounded):
            return
        if compressor.unbiased:
            raise ValueError(
                f"efcomm: method {self.name!r} needs a contractive compressor and {compressor!r} is not "
                f"(omega >= 1 for some bucket sizes); use {compressor!r}.scaled(), which divides by omega + 1"
            )
        raise ValueError(
            f"efcomm: method {self.name!r} needs a contractive compressor and {compressor!r} is not "
            "(no alpha for some bucket sizes)"
            + ("; classic error feedback ('ef') accepts it (its error is bounded)" if compressor.bounded else "")
        )

    def wire_compressor(self, compressor: Compressor) -> Compressor:
        """The compressor this method sends with: the given one, or its own (Clip21's clipping,
        LAG's dense differences, AdaCGD's finest Top-k rung)."""
        return compressor

    def check_world(self, world: int) -> None:
        """Raises if the method's parameters do not fit a group of ``world`` workers."""

    def init_state(self, g: Tensor, g_mean: Optional[Tensor], worker: Worker) -> dict:
        raise NotImplementedError

    def wire_nbytes(self, codec: Codec) -> int:
        """Bytes of one message (the largest, for the lazy methods)."""
        return codec.nbytes

    def nonfinite_in(self, gathered: Tensor, codec: Codec) -> Optional[Tensor]:
        """Whether the gathered messages carry inf/NaN (Compressor.nonfinite_in), or None."""
        return codec.nonfinite_in(gathered)

    def encode(self, g: Tensor, state: dict, codec: Codec, worker: Worker) -> Tensor:
        raise NotImplementedError

    def decode(self, state: dict, gathered: Tensor, codec: Codec, g: Tensor, worker: Worker) -> Tensor:
        raise NotImplementedError

    def reformed(self, tensors: dict) -> dict:
        """The per-rank tensors re-formed by ``reform`` (elastic resume), the shared ones kept."""
        out = dict(tensors)
        for local, shared in self.reform.items():
            out[local] = tensors[shared].clone() if shared is not None else torch.zeros_like(tensors[local])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


METHODS: dict = {}  # name -> class, filled by @register_method


def register_method(cls):
    METHODS[cls.name] = cls
    return cls


def make_method(method) -> Method:
    """A Method from a name (default parameters) or a Method instance (returned as is)."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"efcomm: method ({method!r}) must be one of {sorted(METHODS)} or a Method")
    if method == "ef21-w":
        raise ValueError("efcomm: method 'ef21-w' needs weights: pass efcomm.methods.EF21W(weights=[...])")
    return METHODS[method]()


def rank_weights(n: int, world: int, device: torch.device) -> Tensor:
    """``n`` weights of 1 / world (a mean over the group of a subset of its rows), on ``device``."""
    return torch.full((n,), 1.0 / world, dtype=torch.float32, device=device)
