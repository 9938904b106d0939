"""efcomm.sim: n workers in one process, driven through the very methods and ops the DDP
hook uses (efcomm.methods), on problems with known constants (efcomm.problems).

    from efcomm import sim, problems, TopK
    history = sim.simulate(problems.beznosikov_counterexample(), "ef21", TopK(k=1), steps=2000, lr=0.01)

    python -m efcomm.sim --out figures/     # draws the reproduction figures to PNG
"""
import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import ops
from .compressors import QSGD, Codec, Compressor, Context, Induced, Natural, RandK, ScaledSign, TopK
from .cluster import Cluster
from .methods import EF21SGDM, EF21W, LAG, EControl, MoTEF, Worker, ef21_encode_, make_method
from .problems import Problem, beznosikov_counterexample, ill_conditioned_quadratic, logistic_nonconvex, quadratic


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
            grads = problem.grads(point) if batch_size is None else problem.stochastic_grads(point, batch_size, generator)
            return [g.to(dtype) for g in grads]
        out = []
        for i, p in enumerate(points):
            grads = problem.grads(p.float()) if batch_size is None else problem.stochastic_grads(p.float(), batch_size, generator)
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
            messages = [ef21_encode_(src, s[local], c) for src, s, c in zip(sources, states, codecs)]
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


def _plot(path: Path, title: str, xlabel: str, ylabel: str, curves: list) -> Path:
    """One log-scale figure of (label, x values or None, y values) curves, saved to path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, xs, ys in curves:
        ax.semilogy(*((ys,) if xs is None else (xs, ys)), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figures(out: Path, steps: int = 2000) -> list:
    """Draws the reproduction figures (the claims tests/python/test_sim.py asserts); returns
    the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    grad = "||grad f||^2"
    written = []

    problem = beznosikov_counterexample()
    curves = [(m, None, simulate(problem, m, TopK(k=1), steps=steps, lr=0.01).x_norm) for m in ("none", "ef", "ef21")]
    written.append(_plot(out / "counterexample.png", "Beznosikov et al. 2020, Top-1, lr 0.01", "step", "||x - x*||", curves))

    problem = quadratic([1.0] * 9 + [100.0], d=100)
    compressor = TopK(k=10)
    alpha = compressor.alpha(problem.d)
    runs = (
        ("EF21, quadratic-mean step", "ef21", problem.L_qm),
        ("EF21-W, arithmetic-mean step", EF21W.from_smoothness(problem.L_i), problem.L_am),
    )
    curves = [
        (label, None, simulate(problem, m, compressor, steps=steps, lr=ef21_stepsize(alpha, problem.L, L_tilde)).grad_norm_sq)
        for label, m, L_tilde in runs
    ]
    title = f"heterogeneous quadratics, L_QM/L_AM = {problem.L_qm / problem.L_am:.2f}"
    written.append(_plot(out / "quadratic_stepsizes.png", title, "step", grad, curves))

    compressor = TopK(k=1)
    lr = 16 * ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_qm)
    runs = (("EF", "ef"), ("EControl, eta = k/d", EControl()), ("EF21", "ef21"))
    curves = [(label, None, simulate(problem, m, compressor, steps=steps, lr=lr).grad_norm_sq) for label, m in runs]
    written.append(_plot(out / "econtrol_vs_ef.png", "heterogeneous quadratics, Top-1, same step", "step", grad, curves))

    problem = logistic_nonconvex()
    lr = ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    curves = []
    for m in ("none", "ef", "ef21"):
        h = simulate(problem, m, TopK(k=1), steps=steps, lr=lr)
        curves.append((m, [b / 8e3 for b in h.bits_per_worker], h.grad_norm_sq))
    title = "non-convex logistic regression, Top-1, EF21 theory step"
    written.append(_plot(out / "logistic_nonconvex.png", title, "kB sent per worker", grad, curves))

    runs = (("EF21-SGD", "ef21"), ("EF21-SGDM, eta 0.1", EF21SGDM(eta=0.1)))
    curves = [
        (label, None, simulate(problem, m, TopK(k=1), steps=steps, lr=4 * lr, batch_size=1, seed=1).grad_norm_sq)
        for label, m in runs
    ]
    written.append(_plot(out / "sgdm_small_batches.png", "logistic regression, batch size 1, Top-1", "step", grad, curves))

    curves = []
    for zeta in (0.0, 16.0):
        h = simulate(problem, LAG(zeta), TopK(k=1), steps=min(steps, 600), lr=20 * lr)
        curves.append((f"LAG, zeta {zeta:g}", [b / 8e3 for b in h.bits_per_worker], h.grad_norm_sq))
    written.append(_plot(out / "lag_bits.png", "logistic regression, lazy aggregation", "kB sent per worker", grad, curves))

    # Horvath & Richtarik 2020 (arXiv 2006.11077): an unbiased compressor induced by Top-k
    # makes plain compressed SGD converge where Top-k alone diverges.
    problem = beznosikov_counterexample()
    runs = (
        ("none, Top-1", "none", TopK(k=1)),
        ("none, Rand-1 unbiased", "none", RandK(k=1, unbiased=True)),
        ("none, induced (Top-1 + Rand-1)", "none", Induced(TopK(k=1), RandK(k=1, unbiased=True))),
        ("EF21, Top-1", "ef21", TopK(k=1)),
    )
    curves = [(label, None, simulate(problem, m, c, steps=steps, lr=0.01).x_norm) for label, m, c in runs]
    written.append(_plot(out / "induced.png", "Beznosikov et al. 2020 example, lr 0.01", "step", "||x - x*||", curves))

    # ... and, where the gradient's energy sits in a few coordinates, reaches an accuracy
    # with fewer bits than Rand-k alone (each at its best step size of a grid).
    problem = ill_conditioned_quadratic()
    runs = (
        ("none, Rand-10 unbiased, lr 0.2", RandK(k=10, unbiased=True), 0.2),
        ("none, induced (Top-2 + Rand-6), lr 0.5", Induced(TopK(k=2), RandK(k=6, unbiased=True)), 0.5),
        ("none, Top-10, lr 1.0", TopK(k=10), 1.0),
    )
    curves = []
    for label, c, lr in runs:
        h = simulate(problem, "none", c, steps=min(steps, 1500), lr=lr)
        curves.append((label, [b / 8e3 for b in h.bits_per_worker], h.grad_norm_sq))
    title = "ill-conditioned quadratics, one minimiser"
    written.append(_plot(out / "induced_bits.png", title, "kB sent per worker", grad, curves))

    problem = logistic_nonconvex()
    runs = (
        ("Top-1", TopK(k=1)),
        ("Rand-1", RandK(k=1)),
        ("scaled sign", ScaledSign(block=32)),
        ("natural", Natural(block=32)),
        ("QSGD s=1, scaled", QSGD(levels=1, block=32).scaled()),
    )
    curves = []
    for label, c in runs:
        h = simulate(problem, "ef21", c, steps=steps, lr=0.5)
        curves.append((label, [b / 8e3 for b in h.bits_per_worker], h.grad_norm_sq))
    title = "EF21 on logistic regression (d = 50), step 0.5"
    written.append(_plot(out / "ef21_compressors.png", title, "kB sent per worker", grad, curves))

    problem = quadratic([1.0] * 9 + [100.0], d=100)
    runs = (
        ("EF", "ef"),
        ("EF21", "ef21"),
        ("MoTEF per worker (paper), gamma 0.2", MoTEF(gamma=0.2, per_worker=True)),
        ("MoTEF shared iterate (hook), gamma 0.1", MoTEF(gamma=0.1)),
    )
    curves = [(label, None, simulate(problem, m, TopK(k=10), steps=steps, lr=0.01).grad_norm_sq) for label, m in runs]
    written.append(_plot(out / "motef.png", "heterogeneous quadratics, Top-10, lr 0.01", "step", grad, curves))
    return written


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description="Draw efcomm's simulator reproduction figures.")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    for path in figures(Path(args.out), args.steps):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
