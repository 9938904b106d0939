"""Optimisation problems for the simulator: n workers' local losses f_i with known smoothness.

Each problem gives the per-worker gradients at x, the global loss f = (1/n) sum_i f_i, the
smoothness constant L of f and the constants L_i of the f_i (for theory step sizes).
Everything is generated from a seed: nothing is downloaded.
"""

import dataclasses
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
    hessians: Optional[Callable] = None  # x -> [Hessian of f_i at x], for the second-order methods
    features: Optional[list] = None  # per worker, its data matrix (rows: samples), for learned bases
    mu: Optional[float] = None  # strong convexity of every f_i, where known (the L2 regulariser of a GLM)

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
    diagonal_rows, center_rows = torch.stack(diagonals), torch.stack(centers)

    def grads(x: Tensor) -> list:
        return list(diagonal_rows * (x - center_rows))

    def loss(x: Tensor) -> float:
        return float((0.5 * diagonal_rows * (x - center_rows) ** 2).sum() / n)

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
    return Problem(
        "ill_conditioned_quadratic", n, d, torch.zeros(d), grads, loss, L, [float(a.max()) for a in diagonals]
    )


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
    a_all, y_all = features.view(n, m, d), labels.view(n, m)  # worker i's samples: row i

    def batch_grads(a: Tensor, y: Tensor, x: Tensor) -> list:
        """Per worker, the gradient on its samples a [n, b, d], y [n, b] (all workers at once)."""
        weights = y * torch.sigmoid(-y * (a @ x))
        return list(-(weights.unsqueeze(1) @ a).squeeze(1) / a.shape[1] + lam * 2 * x / (1 + x * x) ** 2)

    def grads(x: Tensor) -> list:
        return batch_grads(a_all, y_all, x)

    def stochastic_grads(x: Tensor, batch_size: int, generator: torch.Generator) -> list:
        rows = torch.stack([torch.randint(0, m, (batch_size,), generator=generator) for _ in range(n)])
        picked = torch.gather(a_all, 1, rows.unsqueeze(2).expand(n, batch_size, d))
        return batch_grads(picked, torch.gather(y_all, 1, rows), x)

    def loss(x: Tensor) -> float:
        data = float(torch.nn.functional.softplus(-y_all * (a_all @ x)).mean())
        return data + lam * float((x * x / (1 + x * x)).sum())

    chunks = list(zip(a_all, y_all))
    L_i = [float(torch.linalg.matrix_norm(a, ord=2) ** 2 / (4 * m) + 2 * lam) for a, _ in chunks]
    L = float(torch.linalg.matrix_norm(features, ord=2) ** 2 / (4 * n * m) + 2 * lam)
    gen_x0 = torch.Generator().manual_seed(seed + 1)
    return Problem("logistic_nonconvex", n, d, torch.randn(d, generator=gen_x0), grads, loss, L, L_i, stochastic_grads)


def with_gradient_noise(problem: Problem, sigma: float) -> Problem:
    """The same problem with stochastic gradients g_i(x) + (sigma / sqrt(b)) xi_i, xi_i ~ N(0, I)
    independent on every worker: unbiased, variance sigma^2 / b for minibatches of b. The
    bounded-variance oracle of the stochastic analyses (EF21-SGDM, arXiv 2305.15155; EControl,
    arXiv 2311.05645; MoTEF, arXiv 2405.20114)."""

    def stochastic_grads(x: Tensor, batch_size: int, generator: torch.Generator) -> list:
        scale = sigma / math.sqrt(batch_size)
        return [g + scale * torch.randn(g.shape, generator=generator) for g in problem.grads(x)]

    return dataclasses.replace(problem, name=f"{problem.name}+noise", stochastic_grads=stochastic_grads)


def logistic_glm(
    n: int = 4,
    d: int = 10,
    m: int = 50,
    lam: float = 1e-3,
    rank: Optional[int] = None,
    decades: float = 0.0,
    seed: int = 0,
) -> Problem:
    """L2-regularised logistic regression, a generalized linear model, with its Hessians:

        f_i(x) = (1/m) sum_j log(1 + exp(-y_ij <a_ij, x>)) + (lam / 2) ||x||^2,
        Hessian_i(x) = (1/m) A_i^T diag(s_ij (1 - s_ij)) A_i + lam I,  s_ij = sigmoid(<a_ij, x>),

    the problem class of Newton-3PC (Islamov et al. 2022, arXiv 2206.03588) and Basis Learn
    (Qian et al. 2021, arXiv 2111.01847), on generated data instead of LibSVM's. Feature j is
    scaled by 10^(-decades j / d) (ill-conditioned data, where first-order methods are slow),
    every feature vector then divided by the largest norm, and labels are drawn from a
    logistic model (not separable). With ``rank`` r, worker i's features lie in an
    r-dimensional subspace of its own, so Hessian_i - lam I has rank at most r (the structure
    Basis Learn exploits); ``features`` holds each A_i, ``mu`` is lam.
    """
    gen = torch.Generator().manual_seed(seed)
    scales = 10.0 ** (-decades * torch.arange(d, dtype=torch.float32) / d)
    data = []
    for _ in range(n):
        a = torch.randn(m, d if rank is None else rank, generator=gen)
        if rank is not None:
            a = a @ torch.linalg.qr(torch.randn(d, rank, generator=gen))[0].T
        data.append(a * scales)
    largest = max(float(a.norm(dim=1).max()) for a in data)
    teacher = 3.0 * torch.randn(d, generator=gen) / scales / math.sqrt(d)
    chunks = []
    for a in data:
        a = a / largest
        y = torch.where(torch.rand(m, generator=gen) < torch.sigmoid(largest * (a @ teacher) / d), 1.0, -1.0)
        chunks.append((a, y))

    def grads(x: Tensor) -> list:
        return [-(a.T @ (y * torch.sigmoid(-y * (a @ x)))) / m + lam * x for a, y in chunks]

    def hessians(x: Tensor) -> list:
        out = []
        for a, _ in chunks:
            s = torch.sigmoid(a @ x)
            out.append(a.T @ (a * (s * (1 - s)).unsqueeze(1)) / m + lam * torch.eye(d))
        return out

    def loss(x: Tensor) -> float:
        data = sum(float(torch.nn.functional.softplus(-y * (a @ x)).mean()) for a, y in chunks) / n
        return data + 0.5 * lam * float(torch.dot(x, x))

    L_i = [float(torch.linalg.matrix_norm(a, ord=2) ** 2 / (4 * m) + lam) for a, _ in chunks]
    L = float(torch.linalg.matrix_norm(torch.cat([a for a, _ in chunks]), ord=2) ** 2 / (4 * n * m) + lam)
    return Problem(
        "logistic_glm",
        n,
        d,
        torch.zeros(d),
        grads,
        loss,
        L,
        L_i,
        hessians=hessians,
        features=[a for a, _ in chunks],
        mu=lam,
    )


def rare_features(n: int = 10, r: int = 5, c: int = 1, m: int = 20, seed: int = 0) -> Problem:
    """Least squares on sparse data where every feature is rare (Richtarik, Gasanov, Burlachenko
    2023, "Error Feedback Shines when Features are Rare", arXiv 2305.15264): d = n r / c
    features; worker i owns the r features S_i = {(i r + t) mod d : t < r}, so that every
    feature is owned by exactly c workers; f_i(x) = (1 / 2m) ||A_i x - b_i||^2 with A_i zero
    outside the columns S_i and b_i drawn per worker (heterogeneous). grad f_i is supported on
    S_i, so every vector a worker compresses has at most r nonzeros (Top-1 then contracts with
    alpha = 1/r). c = n: every worker owns every feature (not rare)."""
    if n * r % c or r > n * r // c:
        raise ValueError(f"rare_features: n r / c must be an integer of at least r (n={n}, r={r}, c={c})")
    d = n * r // c
    gen = torch.Generator().manual_seed(seed)
    matrices, targets = [], []
    for i in range(n):
        a = torch.zeros(m, d)
        a[:, [(i * r + t) % d for t in range(r)]] = torch.randn(m, r, generator=gen) / math.sqrt(r)
        matrices.append(a)
        targets.append(torch.randn(m, generator=gen))

    def grads(x: Tensor) -> list:
        return [a.T @ (a @ x - b) / m for a, b in zip(matrices, targets)]

    def loss(x: Tensor) -> float:
        return float(sum(0.5 * ((a @ x - b) ** 2).mean() for a, b in zip(matrices, targets)) / n)

    L_i = [float(torch.linalg.matrix_norm(a, ord=2) ** 2 / m) for a in matrices]
    L = float(torch.linalg.matrix_norm(torch.cat(matrices), ord=2) ** 2 / (n * m))
    return Problem(f"rare_features(r={r},c={c})", n, d, torch.zeros(d), grads, loss, L, L_i, features=matrices)


def rare_features_smoothness(L_i: list, c: int) -> float:
    """The constant that replaces the quadratic mean of the L_i in EF21's step size when every
    feature is owned by at most c of the n workers (arXiv 2305.15264, abstract and main
    theorem): sqrt((c/n) min((c/n) max_i L_i^2, (1/n) sum_i L_i^2)). With c = n it is L_QM."""
    n = len(L_i)
    return math.sqrt(c / n * min(c / n * max(L_i) ** 2, sum(v * v for v in L_i) / n))


@dataclass
class SplitProblem:
    """A partially personalized problem (Mishchenko, Islamov, Gorbunov, Horvath 2023, "Partially
    Personalized Federated Learning: Breaking the Curse of Data Heterogeneity", arXiv
    2305.18285): min over global u and private y_1, ..., y_n of (1/n) sum_i f_i(u, y_i).
    ``grads`` takes each worker's copy of u (stacked, [n, *u.shape]), as local steps need."""

    name: str
    n: int
    u0: Tensor
    y0: Tensor  # [n, local dimension]: y_i, row i
    grads: Callable  # (us [n, *u.shape], ys [n, k]) -> (grad_u f_i(u_i, y_i) stacked, grad_y f_i(u_i, y_i) stacked)
    loss: Callable  # (u, ys) -> f
    shared: Problem  # the same data fitted by one model x for every worker (no personal part)


def shared_representation(n: int = 6, d: int = 12, r: int = 2, m: int = 40, seed: int = 0) -> SplitProblem:
    """Multi-task least squares with a shared representation: worker i's targets are
    b_ij = <a_ij, U* w_i> with U* (d x r) common and w_i its own. The global part is the
    representation U, the private part y_i in R^r:

        f_i(U, y_i) = (1 / 2m) ||A_i U y_i - b_i||^2,

    overpersonalized in the paper's sense: U = U*, y_i = w_i fits every worker exactly, so
    every f_i is at its minimum at one solution. ``shared`` fits one linear model x in R^d to
    all workers' data, which heterogeneity (different w_i) keeps from fitting any of them."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, r, generator=gen))[0]
    heads = 2.0 * torch.randn(n, r, generator=gen)
    a = torch.randn(n, m, d, generator=gen)
    b = torch.einsum("imd,dr,ir->im", a, basis, heads)

    def grads(us: Tensor, ys: Tensor) -> tuple:
        back = torch.einsum("imd,im->id", a, torch.einsum("imd,idr,ir->im", a, us, ys) - b) / m  # A_i^T res_i / m
        return torch.einsum("id,ir->idr", back, ys), torch.einsum("id,idr->ir", back, us)

    def loss(u: Tensor, ys: Tensor) -> float:
        return float(0.5 * ((torch.einsum("imd,dr,ir->im", a, u, ys) - b) ** 2).mean())

    def shared_grads(x: Tensor) -> list:
        return list(torch.einsum("imd,im->id", a, torch.einsum("imd,d->im", a, x) - b) / m)

    def shared_loss(x: Tensor) -> float:
        return float(0.5 * ((torch.einsum("imd,d->im", a, x) - b) ** 2).mean())

    L_i = [float(torch.linalg.matrix_norm(a_i, ord=2) ** 2 / m) for a_i in a]
    L = float(torch.linalg.matrix_norm(a.reshape(n * m, d), ord=2) ** 2 / (n * m))
    shared = Problem("shared_representation/shared", n, d, torch.zeros(d), shared_grads, shared_loss, L, L_i)
    u0 = 0.5 * torch.randn(d, r, generator=gen)
    y0 = 0.5 * torch.randn(n, r, generator=gen)
    return SplitProblem("shared_representation", n, u0, y0, grads, loss, shared)
