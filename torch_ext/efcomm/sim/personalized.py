"""Partially personalized learning with local steps: global parameters u shared by every
worker, private parameters y_i that never leave worker i.

Mishchenko, Islamov, Gorbunov, Horvath 2023 ("Partially Personalized Federated Learning:
Breaking the Curse of Data Heterogeneity", arXiv 2305.18285, abstract) split the variables
so that, under the right split (overpersonalized: global parameters exist with which every
client fits its data perfectly), the heterogeneity terms vanish from the analyses of local
steps, asynchrony and Byzantine robustness. The mechanism is that at such a solution every
worker's own gradient is zero, so local steps do not drift.

``local_training`` runs the simplest method with local steps on the split problem: every
round each worker copies the server's u, takes ``local_steps`` gradient steps on (u_i, y_i)
jointly, and the server averages the u_i (y_i stays on the worker); only u travels. It is
the simultaneous-update scheme of Pillutla et al. 2022 ("Federated Learning with Partial
Model Personalization", arXiv 2204.03809) with full participation; the paper's own
algorithm was not available to us, and its claim does not depend on which local method is
used. ``fedavg`` is the same with one shared model and nothing private (Local GD).
"""

import math

from .problems import Problem, SplitProblem
from .simkit import Trace, record


def _record_split(trace: Trace, problem: SplitProblem, u, ys, bits: float) -> None:
    grads_u, grads_y = problem.grads(u.expand(problem.n, *u.shape), ys)
    n = problem.n
    trace.loss.append(problem.loss(u, ys))
    # grad of (1/n) sum_i f_i(u, y_i): the mean of the u-gradients, and grad_{y_i} f_i / n
    trace.grad_norm_sq.append(float((grads_u.mean(0) ** 2).sum() + (grads_y**2).sum() / n**2))
    trace.x_norm.append(float(u.norm()))
    trace.bits_per_worker.append(bits)
    trace.bits_down.append(bits)
    trace.time.append(None)


def local_training(problem: SplitProblem, rounds: int, local_steps: int, lr: float) -> Trace:
    """Local steps on the partially personalized problem; ``bits_per_worker`` (and
    ``bits_down``) count u, the only part that travels (32 bits per entry each way)."""
    n = problem.n
    u, ys = problem.u0.clone(), problem.y0.clone()
    trace, bits = Trace(), 0.0
    _record_split(trace, problem, u, ys, bits)
    for _ in range(rounds):
        us = u.expand(n, *u.shape).clone()
        for _ in range(local_steps):
            grads_u, grads_y = problem.grads(us, ys)
            us, ys = us - lr * grads_u, ys - lr * grads_y
        u = us.mean(0)
        bits += 32.0 * u.numel()
        _record_split(trace, problem, u, ys, bits)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace


def fedavg(problem: Problem, rounds: int, local_steps: int, lr: float) -> Trace:
    """Local GD / FedAvg with full participation on one shared model: every round each
    worker takes ``local_steps`` steps on its own f_i from the server's x, then x is their
    average (McMahan et al. 2017; Khaled, Mishchenko, Richtarik 2020)."""
    n = problem.n
    x = problem.x0.clone().float()
    trace, bits = Trace(), 0.0
    record(trace, problem, x, bits)
    for _ in range(rounds):
        xs = [x.clone() for _ in range(n)]
        for _ in range(local_steps):
            xs = [x_i - lr * problem.grads(x_i)[i] for i, x_i in enumerate(xs)]
        x = sum(xs) / n
        bits += 32.0 * problem.d
        record(trace, problem, x, bits)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace
