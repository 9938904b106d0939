"""What the simulator's method modules share (efcomm.sim.participation, .asynchrony,
.bidirectional, .second_order, .personalized): the one adapter through
which they reach efcomm's compressors, and the trace they record.

Only ``apply_compressor`` touches the compressor layer's API, so that a change of that API
is one change here.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..compressors import Codec, Compressor, Context
from .problems import Problem
from .core import History


def apply_compressor(compressor: Compressor, x: Tensor, *, seed: int, step: int, bucket: int, rank: int) -> tuple:
    """(C(x) as a dense tensor of x's shape and dtype, bits of its message on the wire).

    The random streams are keyed as in the DDP hook: (seed, step, bucket) for Rand-k's
    indices, which every rank shares, plus the rank for stochastic rounding.
    """
    flat = x.detach().reshape(-1)
    codec = Codec(compressor, flat.numel(), flat.dtype, Context(seed, step, bucket, rank))
    message = codec.encode_(flat)
    dense = torch.zeros_like(flat)
    codec.decode_add_(dense, message.unsqueeze(0))
    return dense.view_as(x), 8 * message.numel()


@dataclass
class Trace(History):
    """sim.History plus what the newer methods measure: the bits the server broadcast (per
    worker, cumulative) and the simulated time of each record."""

    bits_down: list = field(default_factory=list)
    time: list = field(default_factory=list)


def full_gradient(problem: Problem, x: Tensor) -> Tensor:
    """grad f(x) = (1/n) sum_i grad f_i(x), summed in float64."""
    return sum(g.double() for g in problem.grads(x.float())) / problem.n


def record(
    trace: Trace, problem: Problem, x: Tensor, bits_up: float, bits_down: float = 0.0, time: Optional[float] = None
) -> None:
    """Appends the state at x: loss, ||grad f(x)||^2, ||x||, bits and time."""
    g = full_gradient(problem, x)
    trace.loss.append(problem.loss(x.float()))
    trace.grad_norm_sq.append(float(torch.dot(g, g)))
    trace.x_norm.append(float(x.double().norm()))
    trace.bits_per_worker.append(bits_up)
    trace.bits_down.append(bits_down)
    trace.time.append(time)
