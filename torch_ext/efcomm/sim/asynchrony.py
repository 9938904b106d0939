"""Asynchronous SGD with workers of different speeds, in simulated time (an event queue, no
threads), and the shuffling baselines.

AsGrad (Islamov, Safaryan, Alistarh 2024, "AsGrad: A Sharp Unified Analysis of
Asynchronous-SGD Algorithms", AISTATS, arXiv 2310.20452) analyses, with heterogeneous data
and speeds, pure asynchronous SGD and its variants, introduces a method based on worker
shuffling, and obtains as by-products rates for SGD with random reshuffling and shuffle-once
SGD. The rules below follow the authors' code (github.com/Rustem-Islamov/AsGrad-public,
``nodes.py``: ``Nodes.get_update`` and ``Nodes.assign_new_job``; ``utils.run_optimizer``):

* every worker starts with one job, a gradient at x_0; a worker computes its jobs one after
  the other, each taking its compute time;
* when a gradient arrives the server steps at once, x <- x - lr g (g was computed at the
  model the job carried: stale), and hands out one new job at the new x:
  ``pure``: to the worker that delivered; ``random``: to a uniformly random worker;
  ``shuffle``: to worker pi(t mod n), pi a permutation of the workers drawn anew every n
  iterations. A job given to a busy worker waits in its queue.

One departure: for ``random`` and ``shuffle`` the authors' code evaluates the new job on the
data of the worker that just delivered (``local_gradient(x, self.last_idx, rng)``); here a
worker always computes the gradient of its own f_i, as the paper's setting states.
"""

import math
from collections import deque
from typing import Optional

import torch

from .problems import Problem
from .simkit import Trace, record

ASSIGNMENTS = ("pure", "random", "shuffle")


def _gradient(problem: Problem, worker: int, x, batch_size: Optional[int], gen: torch.Generator):
    if batch_size is None:
        return problem.grads(x)[worker]
    return problem.stochastic_grads(x, batch_size, gen)[worker]


def asynchronous_sgd(
    problem: Problem,
    compute_times: list,
    steps: int,
    lr: float,
    assignment: str = "pure",
    batch_size: Optional[int] = None,
    seed: int = 0,
) -> Trace:
    """``steps`` server updates of asynchronous SGD; worker i needs compute_times[i] time units
    per gradient. The trace records, after each update, the state at the server's x, the
    simulated time and the bits received per worker (one dense float32 gradient per update)."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"asynchronous_sgd: assignment ({assignment!r}) must be one of {ASSIGNMENTS}")
    if len(compute_times) != problem.n or min(compute_times) <= 0:
        raise ValueError(f"asynchronous_sgd: compute_times ({compute_times}) must be {problem.n} positive numbers")
    n = problem.n
    gen = torch.Generator().manual_seed(seed)
    x = problem.x0.clone().float()
    queues = [deque([x]) for _ in range(n)]
    finish = [float(t) for t in compute_times]  # time at which each worker's current job ends
    permutation = torch.randperm(n, generator=gen).tolist()
    trace, bits = Trace(), 0.0
    record(trace, problem, x, bits, time=0.0)
    for t in range(steps):
        worker = min(range(n), key=lambda i: (finish[i], i))
        now = finish[worker]
        g = _gradient(problem, worker, queues[worker].popleft(), batch_size, gen)
        finish[worker] = now + compute_times[worker] if queues[worker] else math.inf
        x = x - lr * g
        bits += 32.0 * problem.d / n
        if assignment == "pure":
            target = worker
        elif assignment == "random":
            target = int(torch.randint(n, (1,), generator=gen))
        else:
            target = permutation[t % n]
            if (t + 1) % n == 0:
                permutation = torch.randperm(n, generator=gen).tolist()
        if not queues[target]:
            finish[target] = now + compute_times[target]
        queues[target].append(x)
        record(trace, problem, x, bits, time=now)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace


def shuffled_sgd(
    problem: Problem, epochs: int, lr: float, reshuffle: bool = True, batch: int = 1, seed: int = 0
) -> Trace:
    """Incremental SGD over the workers' functions in a permuted order, ``batch`` workers per
    step (x <- x - lr mean of their gradients): random reshuffling (a new permutation every
    epoch) or, with ``reshuffle=False``, shuffle-once (one permutation for the whole run).
    Mishchenko, Khaled, Richtarik 2020 ("Random Reshuffling: Simple Analysis with Vast
    Improvements", arXiv 2006.05988) analyse both; AsGrad recovers their rates. Each step
    takes one time unit in the trace."""
    if not 1 <= batch <= problem.n or problem.n % batch:
        raise ValueError(f"shuffled_sgd: batch ({batch}) must divide the number of workers ({problem.n})")
    gen = torch.Generator().manual_seed(seed)
    x = problem.x0.clone().float()
    permutation = torch.randperm(problem.n, generator=gen).tolist()
    trace, bits, step = Trace(), 0.0, 0
    record(trace, problem, x, bits, time=0.0)
    for epoch in range(epochs):
        if reshuffle and epoch > 0:
            permutation = torch.randperm(problem.n, generator=gen).tolist()
        for start in range(0, problem.n, batch):
            grads = problem.grads(x)
            x = x - lr * sum(grads[i] for i in permutation[start : start + batch]) / batch
            bits += 32.0 * problem.d * batch / problem.n
            step += 1
            record(trace, problem, x, bits, time=float(step))
    return trace
