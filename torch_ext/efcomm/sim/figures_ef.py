"""Figures of the error-feedback family's claims (asserted by tests/python/test_sim.py and
test_sim_rare_features.py, at smaller sizes). Each function draws one figure into ``out``
at run lengths times ``scale`` and returns its path."""

from pathlib import Path

from ..compressors import QSGD, Identity, Induced, Natural, RandK, ScaledSign, TopK
from ..methods import EF21SGDM, EF21W, LAG, EControl, MoTEF
from .plots import semilogy, steps
from .problems import (
    beznosikov_counterexample,
    ill_conditioned_quadratic,
    logistic_nonconvex,
    quadratic,
    rare_features,
    rare_features_smoothness,
    with_gradient_noise,
)
from .core import ef21_stepsize, simulate

GRAD = "||grad f||^2"
HETEROGENEOUS_L = [1.0] * 9 + [100.0]


def _kbits(history) -> list:
    return [b / 8e3 for b in history.bits_per_worker]


def counterexample(out: Path, scale: float) -> Path:
    problem = beznosikov_counterexample()
    curves = [
        (m, None, simulate(problem, m, TopK(k=1), steps=steps(2000, scale), lr=0.01).x_norm)
        for m in ("none", "ef", "ef21")
    ]
    return semilogy(out / "counterexample.png", "Beznosikov et al. 2020, Top-1, lr 0.01", "step", "||x - x*||", curves)


def quadratic_stepsizes(out: Path, scale: float) -> Path:
    problem = quadratic(HETEROGENEOUS_L, d=100)
    compressor = TopK(k=10)
    alpha = compressor.alpha(problem.d)
    am, qm = (ef21_stepsize(alpha, problem.L, L_tilde) for L_tilde in (problem.L_am, problem.L_qm))
    runs = (
        ("EF21, quadratic-mean step", "ef21", qm),
        ("EF21, arithmetic-mean step", "ef21", am),
        ("EF21-W, arithmetic-mean step", EF21W.from_smoothness(problem.L_i), am),
    )
    curves = [
        (label, None, simulate(problem, m, compressor, steps=steps(3000, scale), lr=lr).grad_norm_sq)
        for label, m, lr in runs
    ]
    title = f"heterogeneous quadratics, Top-10: step ratio {am / qm:.2f} (L_QM/L_AM {problem.L_qm / problem.L_am:.2f})"
    return semilogy(out / "quadratic_stepsizes.png", title, "step", GRAD, curves)


def econtrol_vs_ef(out: Path, scale: float) -> Path:
    problem = quadratic(HETEROGENEOUS_L, d=100)
    compressor = TopK(k=1)
    lr = 16 * ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_qm)
    runs = (("EF", "ef"), ("EControl, eta = k/d", EControl()), ("EF21", "ef21"))
    curves = [
        (label, None, simulate(problem, m, compressor, steps=steps(3000, scale), lr=lr).grad_norm_sq)
        for label, m in runs
    ]
    return semilogy(out / "econtrol_vs_ef.png", "heterogeneous quadratics, Top-1, same step", "step", GRAD, curves)


def _noise_floors(path: Path, title: str, compressor, runs, scale: float) -> Path:
    problem = with_gradient_noise(quadratic([1.0, 1.0, 1.0, 10.0], d=20), sigma=1.0)
    lr = ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_am)
    curves = [
        (
            label,
            None,
            simulate(problem, m, compressor, steps=steps(3000, scale), lr=lr, batch_size=1, seed=1).grad_norm_sq,
        )
        for label, m in runs
    ]
    return semilogy(path, title, "step", GRAD, curves)


def econtrol_noise(out: Path, scale: float) -> Path:
    runs = (("EF21", "ef21"), ("EControl, eta = k/d", EControl()))
    return _noise_floors(
        out / "econtrol_noise.png", "stochastic gradients (variance 1, batch 1), Top-1 of 20", TopK(k=1), runs, scale
    )


def momentum_noise(out: Path, scale: float) -> Path:
    runs = (
        ("EF21", "ef21"),
        ("EF21-SGDM, eta 0.1", EF21SGDM(eta=0.1)),
        ("MoTEF, lambda 0.05", MoTEF(gamma=0.1, lam=0.05)),
        ("MoTEF, lambda 1 (no momentum)", MoTEF(gamma=0.1, lam=1.0)),
    )
    return _noise_floors(
        out / "momentum_noise.png", "stochastic gradients (variance 1, batch 1), Top-2 of 20", TopK(k=2), runs, scale
    )


def logistic_nonconvex_figure(out: Path, scale: float) -> Path:
    problem = logistic_nonconvex()
    lr = ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    curves = []
    for m in ("none", "ef", "ef21"):
        h = simulate(problem, m, TopK(k=1), steps=steps(2000, scale), lr=lr)
        curves.append((m, _kbits(h), h.grad_norm_sq))
    title = "non-convex logistic regression, Top-1, EF21 theory step"
    return semilogy(out / "logistic_nonconvex.png", title, "kB sent per worker", GRAD, curves)


def lag_bits(out: Path, scale: float) -> Path:
    problem = logistic_nonconvex()
    lr = 20 * ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    curves = []
    for zeta in (0.0, 16.0):
        h = simulate(problem, LAG(zeta), TopK(k=1), steps=steps(600, scale), lr=lr)
        curves.append((f"LAG, zeta {zeta:g}", _kbits(h), h.grad_norm_sq))
    return semilogy(out / "lag_bits.png", "logistic regression, lazy aggregation", "kB sent per worker", GRAD, curves)


def induced(out: Path, scale: float) -> Path:
    """Horvath & Richtarik 2020 (arXiv 2006.11077): compressed SGD with the compressor induced
    by Top-k converges where Top-k alone diverges."""
    problem = beznosikov_counterexample()
    runs = (
        ("none, Top-1", "none", TopK(k=1)),
        ("none, Rand-1 unbiased", "none", RandK(k=1, unbiased=True)),
        ("none, induced (Top-1 + Rand-1)", "none", Induced(TopK(k=1), RandK(k=1, unbiased=True))),
        ("EF21, Top-1", "ef21", TopK(k=1)),
    )
    curves = [(label, None, simulate(problem, m, c, steps=steps(2000, scale), lr=0.01).x_norm) for label, m, c in runs]
    return semilogy(out / "induced.png", "Beznosikov et al. 2020 example, lr 0.01", "step", "||x - x*||", curves)


def induced_bits(out: Path, scale: float) -> Path:
    """... and, where the gradient's energy sits in a few coordinates, reaches an accuracy with
    fewer bits than Rand-k alone (each at its best step size of a grid)."""
    problem = ill_conditioned_quadratic()
    runs = (
        ("none, Rand-10 unbiased, lr 0.2", RandK(k=10, unbiased=True), 0.2),
        ("none, induced (Top-2 + Rand-6), lr 0.5", Induced(TopK(k=2), RandK(k=6, unbiased=True)), 0.5),
        ("none, Top-10, lr 1.0", TopK(k=10), 1.0),
    )
    curves = []
    for label, c, lr in runs:
        h = simulate(problem, "none", c, steps=steps(1500, scale), lr=lr)
        curves.append((label, _kbits(h), h.grad_norm_sq))
    return semilogy(
        out / "induced_bits.png", "ill-conditioned quadratics, one minimiser", "kB sent per worker", GRAD, curves
    )


def ef21_compressors(out: Path, scale: float) -> Path:
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
        h = simulate(problem, "ef21", c, steps=steps(2000, scale), lr=0.5)
        curves.append((label, _kbits(h), h.grad_norm_sq))
    return semilogy(
        out / "ef21_compressors.png",
        "EF21 on logistic regression (d = 50), step 0.5",
        "kB sent per worker",
        GRAD,
        curves,
    )


def motef(out: Path, scale: float) -> Path:
    problem = quadratic(HETEROGENEOUS_L, d=100)
    runs = (
        ("EF", "ef"),
        ("EF21", "ef21"),
        ("MoTEF per worker (paper), gamma 0.2", MoTEF(gamma=0.2, per_worker=True)),
        ("MoTEF shared iterate (hook), gamma 0.1", MoTEF(gamma=0.1)),
    )
    curves = [
        (label, None, simulate(problem, m, TopK(k=10), steps=steps(2000, scale), lr=0.01).grad_norm_sq)
        for label, m in runs
    ]
    return semilogy(out / "motef.png", "heterogeneous quadratics, Top-10, lr 0.01", "step", GRAD, curves)


def rare_features_figure(out: Path, scale: float) -> Path:
    """Richtarik, Gasanov, Burlachenko 2023 (arXiv 2305.15264): EF21's step size with rare
    features; gradient descent sending its r nonzeros for reference."""
    curves = []
    for c in (1, 2):
        problem = rare_features(n=6, r=4, c=c)
        rare = ef21_stepsize(1 / 4, problem.L, rare_features_smoothness(problem.L_i, c))
        original = ef21_stepsize(1 / 4, problem.L, problem.L_qm)
        for label, lr in (("rare-features step", rare), ("original step", original)):
            curves.append(
                (
                    f"EF21 Top-1, c = {c}, {label}",
                    None,
                    simulate(problem, "ef21", TopK(k=1), steps=steps(1200, scale), lr=lr).grad_norm_sq,
                )
            )
    problem = rare_features(n=6, r=4, c=1)
    curves.append(
        (
            "gradient descent, c = 1, step 1/L",
            None,
            simulate(problem, "none", Identity(), steps=steps(1200, scale), lr=1 / problem.L).grad_norm_sq,
        )
    )
    return semilogy(out / "rare_features.png", "least squares, 6 workers, r = 4 features each", "step", GRAD, curves)


FIGURES = {
    "counterexample": counterexample,
    "quadratic_stepsizes": quadratic_stepsizes,
    "econtrol_vs_ef": econtrol_vs_ef,
    "econtrol_noise": econtrol_noise,
    "momentum_noise": momentum_noise,
    "logistic_nonconvex": logistic_nonconvex_figure,
    "lag_bits": lag_bits,
    "induced": induced,
    "induced_bits": induced_bits,
    "ef21_compressors": ef21_compressors,
    "motef": motef,
    "rare_features": rare_features_figure,
}
