"""Figures of the settings beyond synchronous first-order training: partial participation,
asynchrony, bidirectional compression, second-order methods, partial personalization
(asserted by tests/python/test_sim_*.py at smaller sizes). Each function draws one figure
into ``out`` at run lengths times ``scale`` and returns its path."""

from pathlib import Path

from .asynchrony import asynchronous_sgd, shuffled_sgd
from .bidirectional import ef21_bc
from ..compressors import Identity, Induced, NonUniformRandK, RandK, TopK
from .participation import Sampling, dcsgd_pp, ef21_pp
from .personalized import fedavg, local_training
from .plots import semilogy, steps
from .problems import (
    beznosikov_counterexample,
    ill_conditioned_quadratic,
    logistic_glm,
    logistic_nonconvex,
    quadratic,
    shared_representation,
)
from .second_order import Bernoulli, Contractive, Lazy, Threshold, basis_learn, newton_3pc
from .core import ef21_stepsize, simulate

GRAD = "||grad f||^2"
INDUCED = Induced(TopK(k=1), RandK(k=1, unbiased=True))


def _kbits(values) -> list:
    return [b / 8e3 for b in values]


def participation(out: Path, scale: float) -> Path:
    problem = quadratic([1.0, 2.0, 4.0, 8.0], d=10)
    compressor = TopK(k=2)
    lr = ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_am)
    samplings = (Sampling.independent([1.0] * 4), Sampling.independent([0.25, 0.5, 0.75, 1.0]), Sampling.nice(4, 1))
    curves = []
    for s in samplings:
        curves.append(
            (f"EF21-PP, {s.description}", None, ef21_pp(problem, compressor, s, steps(1500, scale), lr).grad_norm_sq)
        )
    for s in samplings:
        curves.append(
            (
                f"induced Top-1, {s.description}",
                None,
                dcsgd_pp(problem, INDUCED, s, steps(1500, scale), lr).grad_norm_sq,
            )
        )
    return semilogy(out / "participation.png", "partial participation, heterogeneous quadratics", "round", GRAD, curves)


def participation_counterexample(out: Path, scale: float) -> Path:
    problem = beznosikov_counterexample()
    sampling = Sampling.explicit(3, [[0], [1, 2], [0, 1, 2]], [0.3, 0.5, 0.2])
    curves = [
        (label, None, dcsgd_pp(problem, c, sampling, steps(400, scale), 0.05).x_norm)
        for label, c in (("compressed SGD, Top-1", TopK(k=1)), ("compressed SGD, induced Top-1", INDUCED))
    ]
    title = "counterexample, S = {0}, {1,2} or all (p 0.3, 0.5, 0.2), lr 0.05"
    return semilogy(out / "participation_counterexample.png", title, "round", "||x - x*||", curves)


def asynchrony(out: Path, scale: float) -> Path:
    problem = quadratic([1.0, 2.0, 4.0, 8.0], d=10)
    times = [1.0, 1.0, 1.0, 8.0]
    curves = []
    for lr in (0.04, 0.01):
        for assignment in ("pure", "shuffle"):
            trace = asynchronous_sgd(problem, times, steps(2000, scale), lr, assignment)
            curves.append((f"asynchronous SGD, {assignment}, lr {lr}", None, trace.grad_norm_sq))
    curves.append(("random reshuffling, lr 0.01", None, shuffled_sgd(problem, steps(500, scale), 0.01).grad_norm_sq))
    return semilogy(
        out / "asynchrony.png", "compute times 1, 1, 1, 8; heterogeneous quadratics", "server update", GRAD, curves
    )


def bidirectional(out: Path, scale: float) -> Path:
    problem = logistic_nonconvex()
    curves = []
    for label, server in (
        ("dense broadcast", Identity()),
        ("Top-5 broadcast", TopK(k=5)),
        ("Top-10 broadcast", TopK(k=10)),
    ):
        trace = ef21_bc(problem, TopK(k=5), server, steps(400, scale), 0.5)
        total = [up + down for up, down in zip(trace.bits_per_worker, trace.bits_down)]
        curves.append((f"EF21-BC, Top-5 up, {label}", _kbits(total), trace.grad_norm_sq))
    return semilogy(
        out / "bidirectional.png",
        "logistic regression (d = 50), bits both ways",
        "kB sent + received per worker",
        GRAD,
        curves,
    )


def newton(out: Path, scale: float) -> Path:
    problem = logistic_glm(n=4, d=10, lam=1e-4, decades=1.0)
    gd = simulate(problem, "none", Identity(), steps=steps(600, scale), lr=1 / problem.L)
    curves = [("gradient descent, step 1/L", _kbits(gd.bits_per_worker), gd.grad_norm_sq)]
    mechanisms = (
        ("EF21 Top-8", Contractive(TopK(k=8))),
        ("LAG", Lazy(1.0)),
        ("adaptive threshold 0.5", Threshold(0.5)),
        ("Bernoulli 0.5, Top-8", Bernoulli(0.5, Contractive(TopK(k=8)))),
    )
    for label, mechanism in mechanisms:
        trace = newton_3pc(problem, mechanism, steps(10, scale, least=3))
        curves.append((f"Newton-3PC, {label}", _kbits(trace.bits_per_worker), trace.grad_norm_sq))
    return semilogy(
        out / "newton.png", "L2 logistic regression, condition number 200", "kB sent per worker", GRAD, curves
    )


def basis_learn_figure(out: Path, scale: float) -> Path:
    problem = logistic_glm(n=4, d=16, lam=1e-3, rank=2, decades=1.0)
    runs = (
        (
            "Newton-3PC, standard basis, Top-20 of 136",
            newton_3pc(problem, Contractive(TopK(k=20)), steps(10, scale, least=3)),
        ),
        ("BL1, learned basis, Top-1 of 3, dense broadcast", basis_learn(problem, TopK(k=1), steps(10, scale, least=3))),
        ("BL1, Top-1 of 3, Top-4 broadcast", basis_learn(problem, TopK(k=1), steps(10, scale, least=3), TopK(k=4))),
    )
    curves = [(label, _kbits(t.bits_per_worker), t.grad_norm_sq) for label, t in runs]
    return semilogy(
        out / "basis_learn.png",
        "logistic regression, each worker's data of rank 2 (d = 16)",
        "kB sent per worker",
        GRAD,
        curves,
    )


def personalized(out: Path, scale: float) -> Path:
    problem = shared_representation()
    curves = []
    for k in (1, 5, 20):
        curves.append(
            (
                f"personalized, {k} local steps, lr 0.05",
                None,
                local_training(problem, steps(300, scale), k, 0.05).grad_norm_sq,
            )
        )
    for k in (1, 4, 8):
        curves.append(
            (
                f"one shared model, {k} local steps, lr 0.15",
                None,
                fedavg(problem.shared, steps(300, scale), k, 0.15).grad_norm_sq,
            )
        )
    return semilogy(
        out / "personalized.png", "shared representation, 6 workers with different tasks", "round", GRAD, curves
    )


def randk_sampling(out: Path, scale: float) -> Path:
    """Compressed SGD with unbiased Rand-k: shared indices, independent ones (the papers'
    setting: a noise floor from the heterogeneity), and importance sampling."""
    problem = quadratic([1.0, 2.0, 4.0, 8.0], d=40)
    curves = [
        (label, None, simulate(problem, "none", c, steps=steps(1500, scale), lr=0.02).grad_norm_sq)
        for label, c in (
            ("Rand-4, shared indices", RandK(k=4, unbiased=True)),
            ("Rand-4, independent indices", RandK(k=4, unbiased=True, shared=False)),
        )
    ]
    problem = ill_conditioned_quadratic()
    for label, c, lr in (
        ("ill-conditioned: uniform Rand-4, independent, lr 0.1", RandK(k=4, unbiased=True, shared=False), 0.1),
        ("ill-conditioned: importance-sampled Rand-4, lr 0.7", NonUniformRandK(k=4), 0.7),
    ):
        curves.append((label, None, simulate(problem, "none", c, steps=steps(600, scale), lr=lr).grad_norm_sq))
    return semilogy(out / "randk_sampling.png", "compressed SGD with unbiased Rand-k", "step", GRAD, curves)


FIGURES = {
    "participation": participation,
    "participation_counterexample": participation_counterexample,
    "asynchrony": asynchrony,
    "bidirectional": bidirectional,
    "newton": newton,
    "basis_learn": basis_learn_figure,
    "personalized": personalized,
    "randk_sampling": randk_sampling,
}
