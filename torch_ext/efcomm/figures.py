"""The simulator's reproduction figures (python -m efcomm.sim --out docs/figures, or
python -m efcomm.figures): each draws a claim that tests/python/test_sim*.py asserts."""
import argparse
from pathlib import Path
from typing import Optional

from .compressors import QSGD, Induced, Natural, RandK, ScaledSign, TopK
from .methods import EF21SGDM, EF21W, LAG, EControl, MoTEF
from .problems import beznosikov_counterexample, ill_conditioned_quadratic, logistic_nonconvex, quadratic
from .sim import ef21_stepsize, simulate


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
