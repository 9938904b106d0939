"""Second-order methods whose Hessian messages are compressed, on generalized linear models
(problems with ``hessians``; efcomm.sim.problems.logistic_glm).

* ``newton_3pc``: Newton-3PC (Islamov, Qian, Hanzely, Safaryan, Richtarik 2022, "Distributed
  Newton-Type Methods with Communication Compression and Bernoulli Aggregation", arXiv
  2206.03588): the workers' Hessian estimates H_i are learned through a three-point
  compressor (3PC), H_i <- C_{H_i, Y_i}(Hessian_i(x)), and the server steps
  x <- x - [mean_i H_i]_mu^{-1} grad f(x), [.]_mu the projection onto {H >= mu I}. With the
  EF21 mechanism it is FedNL, whose authors' code this follows (github.com/Rustem-Islamov/
  FedNL-Public, ``methods.py``, class ``FedNL``, Option 1 with update rule 2: the gradient
  sent dense, 32 d bits, H_i += C(Hessian_i - H_i), H_i starting at Hessian_i(x_0)). The
  lazy rules are 3PC's LAG and CLAG (arXiv 2202.00998, as efcomm.methods runs them for
  gradients); adaptive thresholding and Bernoulli aggregation are named in the paper's
  abstract, and their rules here (``Threshold``, ``Bernoulli``) are our reading of the names:
  the paper's text was not available to us.
* ``basis_learn``: BL1 (Qian, Islamov, Safaryan, Richtarik 2021, "Basis Matters: Better
  Communication-Efficient Second Order Methods for Federated Learning", arXiv 2111.01847):
  the same learning of Hessians, in a basis of each worker's own: for a GLM,
  Hessian_i - lam I = V_i S_i V_i^T with V_i an orthonormal basis of the span of worker i's
  features, so the r_i x r_i coefficients S_i are learned and sent instead of the d x d
  matrix; and bidirectional compression, the server broadcasting a compressed model update
  z <- z + C_M(x - z) as in FedNL-BC (Safaryan et al. 2021, arXiv 2106.02969), with
  gradients and Hessians taken at z. The paper's abstract states both ingredients; the
  exact form of its steps was not available to us, and this is our reading of them.

Symmetric matrices travel as their upper triangles. Every compressor is reached through
``simkit.apply_compressor``.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..compressors import Compressor, Identity
from .problems import Problem
from .simkit import Trace, apply_compressor, record


def project(h: Tensor, mu: float) -> Tensor:
    """[H]_mu: the symmetric matrix closest to H with every eigenvalue at least mu."""
    values, vectors = torch.linalg.eigh(h.double())
    return (vectors * values.clamp(min=mu)) @ vectors.T


def _triu(h: Tensor) -> Tensor:
    rows, cols = torch.triu_indices(h.shape[0], h.shape[1])
    return h[rows, cols]


def _untriu(v: Tensor, d: int) -> Tensor:
    rows, cols = torch.triu_indices(d, d)
    h = torch.zeros(d, d, dtype=v.dtype)
    h[rows, cols] = v
    return h + h.T - torch.diag(h.diagonal())


@dataclass(frozen=True)
class Contractive:
    """EF21's 3PC: H <- H + C(X - H) with a contractive compressor C."""

    compressor: Compressor

    def update(self, h: Tensor, y: Tensor, new: Callable, key: dict, gen: torch.Generator) -> tuple:
        x = new()
        c, bits = apply_compressor(self.compressor, (x - h).float(), **key)
        return h + c.double(), x, bits


@dataclass(frozen=True)
class Lazy:
    """3PC's lazy aggregation (LAG; CLAG with a compressor): send only when
    ||X - H||^2 > zeta ||X - Y||^2, Y the last Hessian computed; then H <- X (LAG, dense) or
    H <- H + C(X - H) (CLAG)."""

    zeta: float
    compressor: Optional[Compressor] = None

    def update(self, h, y, new, key, gen):
        x = new()
        if float(((x - h) ** 2).sum()) <= self.zeta * float(((x - y) ** 2).sum()):
            return h, x, 0
        if self.compressor is None:
            return x, x, 32 * x.numel()
        c, bits = apply_compressor(self.compressor, (x - h).float(), **key)
        return h + c.double(), x, bits


@dataclass(frozen=True)
class Threshold:
    """Adaptive thresholding: H <- H + T(X - H), T keeping the entries v_j with
    |v_j| >= lam_t max_l |v_l| (contractive: the largest entry is always kept); its message
    is each kept value and its index, 64 bits per entry."""

    lam_t: float

    def update(self, h, y, new, key, gen):
        x = new()
        delta = x - h
        kept = delta.abs() >= self.lam_t * delta.abs().max()
        return h + torch.where(kept, delta, torch.zeros_like(delta)), x, 64 * int(kept.sum())


@dataclass(frozen=True)
class Bernoulli:
    """Bernoulli aggregation: with probability p run ``inner`` (computing the new Hessian),
    otherwise keep H and send nothing (no Hessian is computed)."""

    p: float
    inner: object

    def update(self, h, y, new, key, gen):
        if float(torch.rand((), generator=gen)) >= self.p:
            return h, y, 0
        return self.inner.update(h, y, new, key, gen)


def _gradient_bits(d: int) -> float:
    return 32.0 * d  # one dense float32 gradient per worker and step


def _check(problem: Problem, name: str, needs_features: bool = False) -> None:
    if problem.hessians is None or problem.mu is None or (needs_features and problem.features is None):
        raise ValueError(f"{name}: problem {problem.name!r} needs hessians, mu{' and features' * needs_features}")


def newton_3pc(problem: Problem, mechanism, steps: int, seed: int = 0) -> Trace:
    """Newton-3PC from x_0 with H_i = Hessian_i(x_0), sent dense once (d (d + 1) / 2 floats),
    projecting onto {H >= mu I} with mu = ``problem.mu``. ``mechanism``: Contractive, Lazy,
    Threshold or Bernoulli."""
    _check(problem, "newton_3pc")
    d, n, mu = problem.d, problem.n, problem.mu
    gen = torch.Generator().manual_seed(seed)
    x = problem.x0.clone().double()
    learned = [_triu(h.double()) for h in problem.hessians(x.float())]
    last = [v.clone() for v in learned]
    trace, bits = Trace(), 32.0 * d * (d + 1) / 2
    record(trace, problem, x.float(), 0.0)
    for step in range(steps):
        grad = sum(g.double() for g in problem.grads(x.float())) / n
        x = x - torch.linalg.solve(project(_untriu(sum(learned) / n, d), mu), grad)
        hessians = _lazy_hessians(problem, x)
        for i in range(n):
            key = dict(seed=seed, step=step, bucket=0, rank=i)
            learned[i], last[i], sent = mechanism.update(learned[i], last[i], lambda i=i: _triu(hessians(i)), key, gen)
            bits += (sent + _gradient_bits(d)) / n
        record(trace, problem, x.float(), bits)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace


def _lazy_hessians(problem: Problem, x: Tensor) -> Callable:
    """i -> Hessian_i(x) in float64, computed on first use (Bernoulli aggregation skips it)."""
    cache = []

    def hessian(i: int) -> Tensor:
        if not cache:
            cache.append([h.double() for h in problem.hessians(x.float())])
        return cache[0][i]

    return hessian


def learned_bases(problem: Problem, tol: float = 1e-6) -> list:
    """Per worker, an orthonormal basis (d x r_i) of the span of its features: Hessian_i - lam I
    of a GLM lives in it."""
    bases = []
    for a in problem.features:
        _, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
        bases.append(vh[s > tol * s[0]].T)
    return bases


def basis_learn(
    problem: Problem, compressor: Compressor, steps: int, model_compressor: Compressor = Identity(), seed: int = 0
) -> Trace:
    """BL1: Hessian coefficients in each worker's learned basis, learned with EF21 and
    ``compressor`` (on the upper triangle of the r_i x r_i coefficients), and the model
    broadcast through ``model_compressor`` (bits in ``bits_down``). The start costs each worker
    its basis (d r_i floats) and its coefficients at x_0, dense."""
    _check(problem, "basis_learn", needs_features=True)
    d, n, mu = problem.d, problem.n, problem.mu
    bases = learned_bases(problem)
    eye = torch.eye(d, dtype=torch.float64)

    def coefficients(z: Tensor) -> list:
        return [_triu(v.T @ (h.double() - mu * eye) @ v) for v, h in zip(bases, problem.hessians(z.float()))]

    z = problem.x0.clone().double()
    learned = coefficients(z)
    trace = Trace()
    up = sum(32.0 * (d * v.shape[1] + c.numel()) for v, c in zip(bases, learned)) / n
    down = 0.0
    record(trace, problem, z.float(), 0.0, 0.0)
    for step in range(steps):
        grad = sum(g.double() for g in problem.grads(z.float())) / n
        h = sum(v @ _untriu(c, v.shape[1]) @ v.T for v, c in zip(bases, learned)) / n + mu * eye
        x = z - torch.linalg.solve(project(h, mu), grad)
        move, sent = apply_compressor(model_compressor, (x - z).float(), seed=seed, step=step, bucket=1, rank=n)
        z = z + move.double()
        down += sent
        targets = coefficients(z)
        for i in range(n):
            c, sent = apply_compressor(
                compressor, (targets[i] - learned[i]).float(), seed=seed, step=step, bucket=0, rank=i
            )
            learned[i] = learned[i] + c.double()
            up += (sent + _gradient_bits(d)) / n
        record(trace, problem, z.float(), up, down)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace
