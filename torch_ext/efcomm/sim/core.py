"""The simulator's core (efcomm.sim.core, re-exported by efcomm.sim): n workers in one
process, driven through the very methods and ops the DDP hook uses (efcomm.methods), on
problems with known constants (efcomm.sim.problems).

    from efcomm import TopK
    from efcomm.sim import problems, simulate
    history = simulate(problems.beznosikov_counterexample(), "ef21", TopK(k=1), steps=2000, lr=0.01)

    python -m efcomm.sim --out docs/figures   # draws the reproduction figures (efcomm.sim.figures)
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..cluster import Cluster
from ..compressors import Codec, Compressor, Context
from ..methods import Worker, make_method
from .problems import Problem


@dataclass
class History:
    """Per step t (before the t-th update; entry 0 is the starting point)."""

    loss: list = field(default_factory=list)
    grad_norm_sq: list = field(default_factory=list)  # ||grad f(x_t)||^2
    x_norm: list = field(default_factory=list)
    bits_per_worker: list = field(default_factory=list)  # cumulative bits a worker sent (mean)
    consensus: list = field(default_factory=list)  # MoTEF: mean ||x_i - mean x|| (per-worker iterates)


def simulate(
    problem: Problem,
    method,
    compressor: Compressor,
    steps: int,
    lr: float,
    dtype: torch.dtype = torch.float32,
    batch_size: Optional[int] = None,
    seed: int = 0,
) -> History:
    """Runs ``steps`` steps of ``x <- x - lr * out`` where out is what the hook returns.

    The workers are the ranks of an in-process :class:`efcomm.cluster.Cluster`: each step
    runs the DDP hook's own step (efcomm.engine) on every worker's gradient, as one bucket
    holding x, and every worker gets the same ``out``. Biased compressors are allowed with
    every method here, to show what happens, and every bucket is compressed however small.
    With ``batch_size``, workers see minibatch gradients (drawn from ``seed``); the history
    always records the full gradient. ``seed`` also keys the compressor's random streams.
    """
    if batch_size is not None and problem.stochastic_grads is None:
        raise ValueError(f"simulate: problem {problem.name!r} has no minibatch gradients (batch_size={batch_size})")
    generator = torch.Generator().manual_seed(seed)
    grads_at = worker_grads_at(problem, dtype, batch_size, generator)
    impl = make_method(method)
    impl.check_compressor(compressor, allow_biased=True)
    impl.check_world(problem.n)
    if impl.per_worker_iterates:
        return _simulate_per_worker(problem, impl, compressor, steps, lr, dtype, grads_at, seed)
    cluster = Cluster.create(
        problem.n, impl, compressor, min_compress_numel=1, allow_biased=True, always_compress=True, seed=seed
    )
    x = problem.x0.clone().to(dtype)
    history = History()

    def record(x_now):
        full = sum(g.double() for g in problem.grads(x_now.float())) / problem.n
        history.loss.append(problem.loss(x_now.float()))
        history.grad_norm_sq.append(float(torch.dot(full, full)))
        history.x_norm.append(float(x_now.double().norm()))
        history.bits_per_worker.append(8 * sum(cluster.bytes_sent()) / problem.n)

    record(x)
    for _ in range(steps):
        out = cluster.step_bucket(grads_at([x] * problem.n))[0]
        x = x - lr * out
        record(x)
        if not math.isfinite(history.x_norm[-1]):
            break
    return history


def worker_grads_at(problem: Problem, dtype: torch.dtype, batch_size: Optional[int], generator: torch.Generator):
    """[x_1, ..., x_n] -> [grad f_i(x_i)]: full gradients, or minibatch ones of batch_size."""

    def grads_at(points):
        if all(p is points[0] for p in points):  # one shared iterate: one evaluation
            point = points[0].float()
            grads = (
                problem.grads(point) if batch_size is None else problem.stochastic_grads(point, batch_size, generator)
            )
            return [g.to(dtype) for g in grads]
        out = []
        for i, p in enumerate(points):
            grads = (
                problem.grads(p.float())
                if batch_size is None
                else problem.stochastic_grads(p.float(), batch_size, generator)
            )
            out.append(grads[i].to(dtype))
        return out

    return grads_at


def _simulate_per_worker(problem, impl, compressor, steps, lr, dtype, grads_at, seed) -> History:
    """MoTEF: every worker keeps its own iterate x_i; both trackers are EF21 steps (the
    ops of the hook's EF21). The history records the average iterate and, in x_norm, its
    norm; ``consensus`` the mean ||x_i - mean x||."""
    n = problem.n
    workers = [Worker(i, n) for i in range(n)]
    xs = [problem.x0.clone().to(dtype) for _ in range(n)]
    grads = grads_at(xs)
    states = [impl.init_state(g, None, w) for g, w in zip(grads, workers)]
    history = History()
    bits = 0

    def record():
        mean = sum(x.double() for x in xs) / n
        full = sum(g.double() for g in problem.grads(mean.float())) / n
        history.loss.append(problem.loss(mean.float()))
        history.grad_norm_sq.append(float(torch.dot(full, full)))
        history.x_norm.append(float(mean.norm()))
        history.bits_per_worker.append(bits)
        history.consensus.append(float(sum((x.double() - mean).norm() for x in xs) / n))

    record()
    for step in range(steps):
        xs = [impl.move(x, s, lr) for x, s in zip(xs, states)]
        for target, local, shared, bucket in (("x", "H", "H_mean", 0), ("V", "G", "G_mean", 1)):
            codecs = [Codec(compressor, problem.d, dtype, Context(seed, step, bucket, w.rank)) for w in workers]
            if target == "V":
                for g, s in zip(grads_at(xs), states):
                    impl.track_momentum(g, s)
            sources = xs if target == "x" else [s["V"] for s in states]
            messages = [c.encode_(src, s[local]) for src, s, c in zip(sources, states, codecs)]
            gathered = torch.stack(messages)
            for s, c in zip(states, codecs):
                c.decode_add_(s[shared], gathered)
            bits += 8 * messages[0].numel()
        record()
        if not math.isfinite(history.x_norm[-1]):
            break
    return history


def ef21_stepsize(alpha: float, L: float, L_tilde: float) -> float:
    """EF21's theoretical step size 1 / (L + L_tilde sqrt(beta / theta)), theta = 1 - sqrt(1 - alpha),
    beta = (1 - alpha) / (1 - sqrt(1 - alpha)) (Richtarik et al. 2021, arXiv 2106.05203, Theorem 1).

    L_tilde is the quadratic mean of the L_i in the original analysis; Richtarik, Gasanov,
    Burlachenko 2024 ("Error Feedback Reloaded", arXiv 2402.10774) show that the arithmetic
    mean suffices (EF21-W's step size).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"ef21_stepsize: alpha ({alpha}) must be in (0, 1]")
    if alpha == 1.0:
        return 1.0 / L
    root = math.sqrt(1.0 - alpha)
    theta = 1.0 - root
    beta = (1.0 - alpha) / (1.0 - root)
    return 1.0 / (L + L_tilde * math.sqrt(beta / theta))


def steps_to_reach(history: History, target: float) -> Optional[int]:
    """First step at which ||grad f||^2 <= target, or None."""
    return next((t for t, v in enumerate(history.grad_norm_sq) if v <= target), None)
