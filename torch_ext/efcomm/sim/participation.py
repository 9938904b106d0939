"""Partial participation: in each round only a random subset S of the n workers computes and
sends, S drawn from any distribution over subsets (a ``Sampling``).

* ``dcsgd_pp``: compressed SGD without error feedback, x <- x - lr sum_{i in S} C(g_i) / (n p_i)
  with p_i = Prob(i in S), which is unbiased for the mean gradient whatever the distribution.
  Horvath & Richtarik 2020 ("A Better Alternative to Error Feedback for Communication-Efficient
  Distributed Learning", arXiv 2006.11077) extend their induced-compressor method to
  "partial participation following an arbitrary distribution over the nodes" (abstract); we
  read the estimator as the standard arbitrary-sampling one above.
* ``ef21_pp``: EF21-PP (Fatkhullin, Sokolov, Gorbunov, Li, Richtarik 2021, "EF21 with Bells &
  Whistles", arXiv 2110.03294, the partial-participation extension): a worker in S sends
  c_i = C(g_i - h_i) and sets h_i += c_i; the others keep h_i; every rank adds
  h += (1/n) sum_{i in S} c_i; x <- x - lr h.

Compressors are reached through ``simkit.apply_compressor``. efcomm's Rand-k draws its
indices from (seed, step, bucket), the same on every rank: the analyses above assume
independent compressors per worker, so a run with Rand-k here is not their setting.
"""

import itertools
import math
from typing import Callable, Optional

import torch

from ..compressors import Compressor
from .problems import Problem
from .simkit import Trace, apply_compressor, record


class Sampling:
    """A distribution over the subsets S of {0, ..., n-1} that take part in a round, with its
    marginals p_i = Prob(i in S) (all positive). Build one with ``independent``, ``nice`` or
    ``explicit`` (any distribution, given by its support). ``support`` lists the subsets with
    their probabilities when there are at most 4096 of them (else None), for exact checks."""

    def __init__(self, n: int, p: list, draw: Callable, description: str, support: Optional[list]) -> None:
        if len(p) != n or any(not 0.0 < q <= 1.0 + 1e-12 for q in p):
            raise ValueError(
                f"Sampling: every one of the {n} workers needs a participation probability in (0, 1]; got {p}"
            )
        self.n, self.p, self._draw, self.description, self.support = (
            n,
            [float(q) for q in p],
            draw,
            description,
            support,
        )

    @classmethod
    def independent(cls, p: list) -> "Sampling":
        """Worker i takes part with probability p_i, independently of the others."""
        n = len(p)
        support = None
        if n <= 12:
            support = []
            for mask in itertools.product((0, 1), repeat=n):
                prob = math.prod(q if bit else 1.0 - q for q, bit in zip(p, mask))
                support.append(([i for i, bit in enumerate(mask) if bit], prob))
        thresholds = torch.tensor([float(q) for q in p], dtype=torch.float64)

        def draw(gen):
            return torch.nonzero(torch.rand(n, generator=gen, dtype=torch.float64) < thresholds).flatten().tolist()

        return cls(n, list(p), draw, f"independent p = {tuple(p)}", support)

    @classmethod
    def nice(cls, n: int, tau: int) -> "Sampling":
        """A uniformly random subset of tau workers (p_i = tau / n)."""
        if not 1 <= tau <= n:
            raise ValueError(f"Sampling.nice: tau ({tau}) must be in [1, {n}]")
        support = None
        if math.comb(n, tau) <= 4096:
            support = [(list(s), 1.0 / math.comb(n, tau)) for s in itertools.combinations(range(n), tau)]
        return cls(
            n,
            [tau / n] * n,
            lambda gen: sorted(torch.randperm(n, generator=gen)[:tau].tolist()),
            f"{tau}-nice",
            support,
        )

    @classmethod
    def explicit(cls, n: int, subsets: list, probs: list) -> "Sampling":
        """S = subsets[j] with probability probs[j]: any distribution, correlated ones included."""
        if len(subsets) != len(probs) or abs(sum(probs) - 1.0) > 1e-9 or min(probs) < 0:
            raise ValueError(
                f"Sampling.explicit: probs ({probs}) must be one non-negative number per subset, summing to 1"
            )
        support = [(sorted(set(s)), float(q)) for s, q in zip(subsets, probs)]
        p = [sum(q for s, q in support if i in s) for i in range(n)]
        weights = torch.tensor(probs, dtype=torch.float64)
        return cls(
            n,
            p,
            lambda gen: support[int(torch.multinomial(weights, 1, generator=gen))][0],
            f"{len(subsets)} subsets",
            support,
        )

    def draw(self, generator: torch.Generator) -> list:
        """One round's participants, ascending."""
        return self._draw(generator)

    def weights(self, subset: list) -> dict:
        """{i: 1 / (n p_i)} for i in the subset: the factors that make sum_{i in S} w_i v_i an
        unbiased estimate of (1/n) sum_i v_i."""
        return {i: 1.0 / (self.n * self.p[i]) for i in subset}


def dcsgd_pp(
    problem: Problem, compressor: Compressor, sampling: Sampling, steps: int, lr: float, seed: int = 0
) -> Trace:
    """Compressed SGD with partial participation: x <- x - lr sum_{i in S} C(g_i) / (n p_i).
    Unbiased compressors (e.g. efcomm.Induced) make the step unbiased; ``bits_per_worker`` is
    the mean over all n workers of what they sent (non-participants send nothing)."""
    gen = torch.Generator().manual_seed(seed)
    x = problem.x0.clone().float()
    trace, bits = Trace(), 0.0
    record(trace, problem, x, bits)
    for step in range(steps):
        chosen = sampling.draw(gen)
        grads = problem.grads(x)
        direction = torch.zeros_like(x)
        for i, w in sampling.weights(chosen).items():
            c, sent = apply_compressor(compressor, grads[i], seed=seed, step=step, bucket=0, rank=i)
            direction += w * c
            bits += sent / problem.n
        x = x - lr * direction
        record(trace, problem, x, bits)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace


def ef21_pp(
    problem: Problem, compressor: Compressor, sampling: Sampling, steps: int, lr: float, seed: int = 0
) -> Trace:
    """EF21-PP. Starts as EF21 does in efcomm: one dense exchange, h_i = g_i(x_0), h = mean
    (32 d bits per worker), then every round x <- x - lr h and the participants' EF21 step."""
    gen = torch.Generator().manual_seed(seed)
    n = problem.n
    x = problem.x0.clone().float()
    h_local = [g.clone() for g in problem.grads(x)]
    h = sum(h_local) / n
    trace, bits = Trace(), 32.0 * problem.d
    record(trace, problem, x, 0.0)
    for step in range(steps):
        x = x - lr * h
        chosen = sampling.draw(gen)
        grads = problem.grads(x)
        for i in chosen:
            c, sent = apply_compressor(compressor, grads[i] - h_local[i], seed=seed, step=step, bucket=0, rank=i)
            h_local[i] += c
            h += c / n
            bits += sent / n
        record(trace, problem, x, bits)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace
