"""Optimisation problems for the simulator: n workers' local losses f_i with known smoothness.

Each problem gives the per-worker gradients at x, the global loss f = (1/n) sum_i f_i, the
smoothness constant L of f and the constants L_i of the f_i (for theory step sizes).
Everything is generated from a seed: nothing is downloaded.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass
class Problem:
    name: str
    n: int
    d: int
    x0: Tensor
    grads: Callable[[Tensor], list]  # x -> [grad f_i(x) for each worker]
    loss: Callable[[Tensor], float]  # x -> f(x)
    L: float  # smoothness constant of f
    L_i: list  # smoothness constants of the f_i
    # (x, batch_size, generator) -> per-worker minibatch gradients, for problems with data
    stochastic_grads: Optional[Callable] = None

    @property
    def L_am(self) -> float:
        """Arithmetic mean of the L_i."""
        return sum(self.L_i) / self.n

    @property
    def L_qm(self) -> float:
        """Quadratic mean of the L_i."""
        return math.sqrt(sum(v * v for v in self.L_i) / self.n)


def beznosikov_counterexample(t: float = 1.0) -> Problem:
    """Distributed gradient descent with Top-1 and no error feedback diverges on this problem
    from x0 = (t, t, t), for every step size (Beznosikov, Horvath, Richtarik, Safaryan 2020,
    "On Biased Compression for Distributed Learning", arXiv 2002.12410, Example 1):

        f_i(x) = <a_i, x>^2 + ||x||^2 / 4,  a_1 = (-3, 2, 2), a_2 = (2, -3, 2), a_3 = (2, 2, -3).

    At x = (s, s, s), grad f_1 = (s/2)(-11, 9, 9) (and its permutations), so Top-1 keeps
    -11s/2 on worker i's own coordinate and the mean step is x <- (1 + 11 gamma / 6) x.
    The minimiser is x* = 0; f is strongly convex.
    """
    a = torch.tensor([[-3.0, 2.0, 2.0], [2.0, -3.0, 2.0], [2.0, 2.0, -3.0]])
    hessians = [2 * torch.outer(a_i, a_i) + 0.5 * torch.eye(3) for a_i in a]

    def grads(x: Tensor) -> list:
        return [2 * torch.dot(a_i, x) * a_i + 0.5 * x for a_i in a]

    def loss(x: Tensor) -> float:
        return float(sum(torch.dot(a_i, x) ** 2 + 0.25 * torch.dot(x, x) for a_i in a) / 3)

    L_i = [float(torch.linalg.eigvalsh(h).max()) for h in hessians]
    L = float(torch.linalg.eigvalsh(sum(hessians) / 3).max())
    return Problem("beznosikov", 3, 3, torch.full((3,), float(t)), grads, loss, L, L_i)


def quadratic(L_i: list, d: int = 100, seed: int = 0) -> Problem:
    """Heterogeneous quadratics f_i(x) = 1/2 (x - b_i)^T A_i (x - b_i) with A_i diagonal,
    eigenvalues spread over [L_i / 100, L_i] so that f_i is exactly L_i-smooth."""
    gen = torch.Generator().manual_seed(seed)
    n = len(L_i)
    diagonals = []
    for L in L_i:
        u = torch.rand(d, generator=gen) * 0.99 + 0.01
        u[0] = 1.0
        diagonals.append(float(L) * u)
    centers = [torch.randn(d, generator=gen) for _ in range(n)]

    def grads(x: Tensor) -> list:
        return [a * (x - b) for a, b in zip(diagonals, centers)]

    def loss(x: Tensor) -> float:
        return float(sum(0.5 * torch.dot(a * (x - b), x - b) for a, b in zip(diagonals, centers)) / n)

    L = float((sum(diagonals) / n).max())
    return Problem("quadratic", n, d, torch.zeros(d), grads, loss, L, [float(v) for v in L_i])


def ill_conditioned_quadratic(
    n: int = 10, d: int = 100, decades: float = 6.0, heterogeneity: float = 0.0, seed: int = 0
) -> Problem:
    """Quadratics f_i(x) = 1/2 (x - b_i)^T A_i (x - b_i) whose curvature falls over ``decades``
    orders of magnitude along the coordinates, the same for every worker (as features of
    very different scales do): A_i = diag(10^(-decades j / d) u_ij), u_ij uniform in
    [0.5, 1]; b_i = 1 + heterogeneity * N(0, I). The gradient's energy sits in a few
    coordinates, where Top-k finds it and Rand-k mostly misses it."""
    gen = torch.Generator().manual_seed(seed)
    scale = 10.0 ** (-decades * torch.arange(d, dtype=torch.float32) / d)
    diagonals = [scale * (0.5 + 0.5 * torch.rand(d, generator=gen)) for _ in range(n)]
    centers = [1.0 + heterogeneity * torch.randn(d, generator=gen) for _ in range(n)]

    def grads(x: Tensor) -> list:
        return [a * (x - b) for a, b in zip(diagonals, centers)]

    def loss(x: Tensor) -> float:
        return float(sum(0.5 * torch.dot(a * (x - b), x - b) for a, b in zip(diagonals, centers)) / n)

    L = float((sum(diagonals) / n).max())
    return Problem("ill_conditioned_quadratic", n, d, torch.zeros(d), grads, loss, L, [float(a.max()) for a in diagonals])


def logistic_nonconvex(n: int = 10, d: int = 50, m: int = 100, lam: float = 0.1, seed: int = 0) -> Problem:
    """Logistic regression with the non-convex regulariser of the EF21 paper's experiments
    (Richtarik, Sokolov, Fatkhullin 2021, arXiv 2106.05203, Section 5):

        f_i(x) = (1/m) sum_j log(1 + exp(-y_ij <a_ij, x>)) + lam * sum_k x_k^2 / (1 + x_k^2)

    on generated data, split heterogeneously: samples are sorted by their label and their
    first feature and cut into contiguous chunks, as the paper splits datasets without
    shuffling. L_i = ||A_i||_2^2 / (4m) + 2 lam.
    """
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n * m, d, generator=gen)
    teacher = torch.randn(d, generator=gen)
    labels = torch.where(features @ teacher + 0.5 * torch.randn(n * m, generator=gen) > 0, 1.0, -1.0)
    order = torch.argsort(labels * 10 + features[:, 0])
    features, labels = features[order], labels[order]
    chunks = [(features[i * m : (i + 1) * m], labels[i * m : (i + 1) * m]) for i in range(n)]

    def local_grad(a: Tensor, y: Tensor, x: Tensor) -> Tensor:
        margins = y * (a @ x)
        return -(a * (y * torch.sigmoid(-margins)).unsqueeze(1)).mean(0) + lam * 2 * x / (1 + x * x) ** 2

    def grads(x: Tensor) -> list:
        return [local_grad(a, y, x) for a, y in chunks]

    def stochastic_grads(x: Tensor, batch_size: int, generator: torch.Generator) -> list:
        rows = [torch.randint(0, m, (batch_size,), generator=generator) for _ in chunks]
        return [local_grad(a[r], y[r], x) for (a, y), r in zip(chunks, rows)]

    def loss(x: Tensor) -> float:
        data = sum(float(torch.nn.functional.softplus(-y * (a @ x)).mean()) for a, y in chunks) / n
        return data + lam * float((x * x / (1 + x * x)).sum())

    L_i = [float(torch.linalg.matrix_norm(a, ord=2) ** 2 / (4 * m) + 2 * lam) for a, _ in chunks]
    L = float(torch.linalg.matrix_norm(features, ord=2) ** 2 / (4 * n * m) + 2 * lam)
    gen_x0 = torch.Generator().manual_seed(seed + 1)
    return Problem("logistic_nonconvex", n, d, torch.randn(d, generator=gen_x0), grads, loss, L, L_i, stochastic_grads)
