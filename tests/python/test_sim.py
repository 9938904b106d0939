"""The simulator reproduces known results, through the same method ops as the DDP hook."""

import math
import warnings
from pathlib import Path

import pytest
import torch

import efcomm

from efcomm import FP8, QSGD, Clip, Induced, Int8, Natural, RandK, ScaledSign, TopK, sim
from efcomm.sim import figures, problems
from efcomm.compressors import Codec
from efcomm.methods import CLAG, EF21SGDM, EF21W, LAG, AdaCGD, Clip21, EControl, MoTEF, Worker, make_method


# Smaller than the figures' problems, so that the whole file runs in seconds.
LOGISTIC = dict(n=5, d=20, m=40)
HETEROGENEOUS_L = [1.0] * 9 + [100.0]  # L_QM / L_AM = 2.90


def ef21_theory_xi(alpha: float) -> float:
    """sqrt(beta / theta) of EF21's step size (arXiv 2106.05203, Theorem 1)."""
    root = math.sqrt(1 - alpha)
    return math.sqrt((1 - alpha) / (1 - root) / (1 - root))


@pytest.mark.parametrize("lr", [0.01, 0.1, 1.0])
def test_counterexample_top1_without_feedback_diverges_for_every_step_size(lr):
    problem = problems.beznosikov_counterexample()
    growth = 1 + 11 * lr / 6
    steps = max(10, math.ceil(math.log(1e4) / math.log(growth)))  # enough to grow 1e4-fold
    h = sim.simulate(problem, "none", TopK(k=1), steps=steps, lr=lr)
    # Closed form of the paper's example: x_t = (1 + 11 lr / 6)^t x_0 on the diagonal.
    for t in (1, 2, 10):
        assert h.x_norm[t] == pytest.approx(growth**t * h.x_norm[0], rel=1e-4)
    assert h.x_norm[-1] > 1e3 * h.x_norm[0] or not math.isfinite(h.x_norm[-1])


@pytest.mark.parametrize("method", ["ef", "ef21"])
def test_counterexample_error_feedback_converges(method):
    problem = problems.beznosikov_counterexample()
    h = sim.simulate(problem, method, TopK(k=1), steps=500, lr=0.05)
    assert h.x_norm[-1] < 1e-5 * h.x_norm[0]
    assert h.loss[-1] < 1e-9


def test_counterexample_constants():
    problem = problems.beznosikov_counterexample()
    # f = (1/3) sum_i <a_i, x>^2 + ||x||^2 / 4: L = 2 * (1/3) * lambda_max(sum a_i a_i^T) + 1/2.
    assert problem.L == pytest.approx(103 / 6, rel=1e-5)
    assert problem.L_i == pytest.approx([34.5] * 3, rel=1e-5)


def test_ef21w_is_ef21_with_a_positively_homogeneous_compressor():
    """EF21-W (Richtarik, Gasanov, Burlachenko 2024, arXiv 2402.10774) compresses
    g_i / (n w_i) - h_i and aggregates sum_i w_i h_i. Top-k is positively homogeneous,
    TopK(s v) = s TopK(v) for s > 0, so EF21-W's h_i is EF21's h_i / (n w_i) and its
    iterates are EF21's: at the same step size (the arithmetic-mean one) both take the same
    steps. The weighting is not what speeds EF21-W up in this setting: the step size is."""
    problem = problems.quadratic(HETEROGENEOUS_L, d=20)
    compressor = TopK(k=4)
    lr = sim.ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_am)
    ef21 = sim.simulate(problem, "ef21", compressor, steps=260, lr=lr)
    ef21w = sim.simulate(problem, EF21W.from_smoothness(problem.L_i), compressor, steps=260, lr=lr)
    reached = sim.steps_to_reach(ef21, 1e-6 * ef21.grad_norm_sq[0])
    # When written: both 245 steps, trajectories equal to 2e-5 (float32 roundings).
    assert reached is not None and sim.steps_to_reach(ef21w, 1e-6 * ef21w.grad_norm_sq[0]) == reached
    assert ef21w.grad_norm_sq[:reached] == pytest.approx(ef21.grad_norm_sq[:reached], rel=1e-4)


def test_the_step_size_ratio_is_by_construction_and_the_arithmetic_mean_step_is_not_the_edge():
    """Richtarik, Gasanov, Burlachenko 2024 (arXiv 2402.10774) improve EF21's analysis: its
    step size 1 / (L + L_tilde xi) may use the arithmetic mean of the L_i for L_tilde where
    the original analysis (arXiv 2106.05203, Theorem 1) needs their quadratic mean. EF21 at
    the larger step converges faster by the ratio of the two step sizes,
    (L + L_QM xi) / (L + L_AM xi), which is not L_QM / L_AM.

    By construction, not a reproduction: steps to a target scale as 1 / lr for any method,
    and gradient descent (the identity compressor) shows the same ratio. What the paper
    proves, that the larger step is safe, is not under test at this step either: EF21 with
    Top-4 still converges at 8x the arithmetic-mean step (the theory steps are far from the
    edge of stability here)."""
    problem = problems.quadratic(HETEROGENEOUS_L, d=20)
    compressor = TopK(k=4)
    alpha = compressor.alpha(problem.d)
    xi = ef21_theory_xi(alpha)
    predicted = (problem.L + problem.L_qm * xi) / (problem.L + problem.L_am * xi)
    ratio = {}
    for name, c in (("ef21", compressor), ("identity", efcomm.Identity())):
        reached = {}
        for mean, L_tilde, steps in (("am", problem.L_am, 260), ("qm", problem.L_qm, 700)):
            h = sim.simulate(problem, "ef21", c, steps=steps, lr=sim.ef21_stepsize(alpha, problem.L, L_tilde))
            reached[mean] = sim.steps_to_reach(h, 1e-6 * h.grad_norm_sq[0])
            assert reached[mean] is not None, (name, mean)
        ratio[name] = reached["qm"] / reached["am"]
    # When written: EF21 674 / 245 = 2.75x, identity 684 / 253 = 2.70x; predicted 2.70x
    # (L_QM / L_AM: 2.90).
    assert ratio["ef21"] == pytest.approx(predicted, rel=0.05)
    assert abs(ratio["ef21"] - predicted) < abs(ratio["ef21"] - problem.L_qm / problem.L_am)
    assert ratio["identity"] == pytest.approx(ratio["ef21"], rel=0.05)  # the control shows it too
    lr = 8 * sim.ef21_stepsize(alpha, problem.L, problem.L_am)
    far = sim.simulate(problem, "ef21", compressor, steps=120, lr=lr)
    # When written: 4.7e-12 relative after 120 steps.
    assert far.grad_norm_sq[-1] < 1e-6 * far.grad_norm_sq[0]


NOISY = problems.with_gradient_noise(problems.quadratic([1.0, 1.0, 1.0, 10.0], d=20), sigma=1.0)


def noise_floor(method, compressor, lr, steps=1200, tail=400):
    h = sim.simulate(NOISY, method, compressor, steps=steps, lr=lr, batch_size=1, seed=1)
    return sum(h.grad_norm_sq[-tail:]) / tail


def test_ef21_sgdm_beats_ef21_sgd_with_small_batches():
    """Fatkhullin, Tyurin, Richtarik 2023 (arXiv 2305.15155): EF21 with stochastic gradients
    needs large batches, EF21-SGDM's momentum does not. Stochastic gradients of variance 1,
    batch size 1, Top-2, both at EF21's theory step. Isolating the cause: eta = 1 is EF21."""
    compressor = TopK(k=2)
    lr = sim.ef21_stepsize(compressor.alpha(NOISY.d), NOISY.L, NOISY.L_am)
    floors = {
        name: noise_floor(m, compressor, lr, steps=900, tail=300)
        for name, m in (("ef21", "ef21"), ("sgdm", EF21SGDM(eta=0.1)))
    }
    # Measured (issue 22 re-run): ef21 0.44, ef21-sgdm (eta 0.1) 0.070.
    assert floors["sgdm"] < 0.3 * floors["ef21"]
    eta_one = sim.simulate(NOISY, EF21SGDM(eta=1.0), compressor, steps=100, lr=lr, batch_size=1, seed=1)
    ef21 = sim.simulate(NOISY, "ef21", compressor, steps=100, lr=lr, batch_size=1, seed=1)
    assert eta_one.grad_norm_sq == pytest.approx(ef21.grad_norm_sq, rel=1e-5)


def test_error_feedback_beats_plain_top1_on_nonconvex_logistic_regression():
    problem = problems.logistic_nonconvex(**LOGISTIC)
    lr = sim.ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    final = {m: sim.simulate(problem, m, TopK(k=1), steps=400, lr=lr).grad_norm_sq[-1] for m in ("none", "ef", "ef21")}
    start = sim.simulate(problem, "none", TopK(k=1), steps=0, lr=lr).grad_norm_sq[0]
    # When written: start 0.446; after 400 steps ef21 0.015, ef 0.016, none 0.31.
    assert final["ef21"] < 0.05 * start and final["ef"] < 0.05 * start
    assert final["none"] > 10 * final["ef21"]


def test_ef21_stepsize_formula():
    # alpha = 1 (no compression): theta = 1, beta = 0, gamma = 1 / L.
    assert sim.ef21_stepsize(1.0, 2.0, 5.0) == pytest.approx(0.5)
    alpha = 0.19  # sqrt(1 - alpha) = 0.9: theta = 0.1, beta = 0.81 / 0.1 = 8.1
    assert sim.ef21_stepsize(alpha, 1.0, 2.0) == pytest.approx(1 / (1 + 2 * math.sqrt(81)))
    with pytest.raises(ValueError, match=r"alpha \(0\)"):
        sim.ef21_stepsize(0, 1.0, 1.0)


def test_simulated_ef21_keeps_the_hook_invariant():
    """h stays the mean of the workers' h_i, as on the ranks of a DDP run."""
    problem = problems.quadratic([1.0, 5.0, 20.0], d=64)
    impl = make_method("ef21")
    workers = [Worker(i, problem.n) for i in range(problem.n)]
    grads = problem.grads(problem.x0)
    mean = sum(g / problem.n for g in grads)
    states = [impl.init_state(g, mean.clone(), w) for g, w in zip(grads, workers)]
    x = problem.x0.clone()
    for _ in range(50):
        x = x - 0.01 * states[0]["h"]
        grads = problem.grads(x)
        codec = Codec(TopK(k=4), problem.d, torch.float32)
        gathered = torch.stack([impl.encode(g, s, codec, w) for g, s, w in zip(grads, states, workers)])
        outs = [impl.decode(s, gathered, codec, g, w) for g, s, w in zip(grads, states, workers)]
        assert all(torch.equal(o, outs[0]) for o in outs)
    mean_local = sum(s["h_local"] for s in states) / problem.n
    assert torch.allclose(states[0]["h"], mean_local, atol=1e-5)


def test_ef21_family_converges_where_ef_stalls_on_heterogeneous_quadratics():
    """Gao, Islamov, Stich 2023 (arXiv 2311.05645) say classic error feedback needs bounded
    gradients or bounded heterogeneity, and EControl does not. On quadratics with different
    minimisers and L_i, at one step size (16x EF21's quadratic-mean theory step), EF stops
    improving while EControl converges. So does EF21 (EControl with eta = 0): this effect
    belongs to the EF21 family, not to EControl's feedback term (next test)."""
    problem = problems.quadratic(HETEROGENEOUS_L, d=20)
    compressor = TopK(k=1)
    lr = 16 * sim.ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_qm)
    runs = {
        name: sim.simulate(problem, m, compressor, steps=600, lr=lr).grad_norm_sq
        for name, m in (("ef", "ef"), ("econtrol", EControl()), ("ef21", "ef21"))
    }
    ef = runs["ef"]
    # When written: start 1085; ef 0.35 (0.26 at 1200 steps, 0.26 at 2400); econtrol 4.4e-5,
    # ef21 2.9e-10.
    assert ef[-1] > 1e-4 * ef[0]
    assert runs["econtrol"][-1] < 1e-7 * ef[0] and runs["ef21"][-1] < 1e-7 * ef[0]
    assert ef[-1] > 1e3 * runs["econtrol"][-1]


def test_econtrol_controls_the_noise_that_ef21_amplifies_but_classic_ef_does_better_here():
    """Where EControl and EF21 differ: stochastic gradients (arXiv 2311.05645: EF21's
    analysis with stochastic gradients needs large batches; EControl's does not). Variance
    1, batch size 1, Top-1 of 20, the same step (EF21's theory step): EControl, with its
    default eta (the compressor's alpha, k/d), settles at a lower ||grad f||^2 than EF21.
    Classic EF, on these mildly heterogeneous quadratics, settles lower than both: the noise
    claim against EF does not reproduce here (next test: where heterogeneity matters too)."""
    compressor = TopK(k=1)
    lr = sim.ef21_stepsize(compressor.alpha(NOISY.d), NOISY.L, NOISY.L_am)
    floors = {
        name: noise_floor(m, compressor, lr, steps=800, tail=300)
        for name, m in (("ef21", "ef21"), ("econtrol", EControl()), ("ef", "ef"))
    }
    # When written: ef21 0.53, econtrol 0.20, ef 0.057 (seed 2: 0.67, 0.17, 0.056; 1500 steps,
    # the last 500: 0.58, 0.20, 0.047).
    assert floors["econtrol"] < 0.5 * floors["ef21"], floors
    assert floors["ef"] < floors["econtrol"], floors


def test_econtrol_beats_ef_and_ef21_where_heterogeneity_and_noise_meet():
    """EControl's claim (arXiv 2311.05645): no heterogeneity bound (where classic EF needs
    one) and EF-like control of the noise (where EF21 amplifies it), at once. One regime
    where both matter: the heterogeneous quadratics (L_i nine 1s and one 100, different
    minimisers) with gradient noise 0.3, batch 1, Top-1 of 20, at 2x EF21's arithmetic-mean
    theory step. The controls: classic EF (no heterogeneity control) and EF21 (EControl
    with eta = 0: no error control)."""
    problem = problems.with_gradient_noise(problems.quadratic(HETEROGENEOUS_L, d=20), sigma=0.3)
    compressor = TopK(k=1)
    lr = 2 * sim.ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_am)
    floors = {}
    for name, m in (("econtrol", EControl()), ("ef", "ef"), ("ef21", EControl(eta=0.0))):
        g = sim.simulate(problem, m, compressor, steps=700, lr=lr, batch_size=1, seed=1).grad_norm_sq
        floors[name] = sum(g[-250:]) / 250
    # When written: econtrol 0.017, ef 0.099, ef21 0.030 (seeds 2 and 3: 0.018 / 0.10 / 0.036
    # and 0.015 / 0.10 / 0.026).
    assert floors["econtrol"] < 0.3 * floors["ef"], floors
    assert floors["econtrol"] < 0.7 * floors["ef21"], floors


def test_econtrol_warns_when_eta_exceeds_alpha():
    """eta above the compressor's alpha: a warning, once per bucket size (not an error:
    2 alpha still converges here, 4 alpha diverges)."""
    problem = problems.quadratic(HETEROGENEOUS_L, d=20)
    compressor = TopK(k=1)  # alpha = 0.05
    lr = sim.ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_am)
    final = {}
    for eta in (None, 0.1, 0.2):  # None: alpha itself
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            final[eta] = sim.simulate(problem, EControl(eta=eta), compressor, steps=300, lr=lr).grad_norm_sq
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if eta is None:
            assert messages == [], eta
        else:
            assert len(messages) == 1, (eta, messages)  # once, not every step
            assert f"eta ({eta}) exceeds the compressor's alpha (0.05) on a bucket of 20 elements" in messages[0]
    # When written: from 1085, eta 0.1 at 0.29 after 300 steps (0.02 after 600); eta 0.2
    # falls to 4.1 and grows again, to 117 after 300 steps (5e6 after 600).
    assert final[0.1][-1] < 1.0
    assert final[0.2][-1] > 10 * min(final[0.2]) and final[0.2][-1] > 100 * final[0.1][-1]


def test_clip21_converges_with_messages_bounded_by_tau():
    """Khirirat et al. 2023 (arXiv 2305.18929): EF21 with clipping converges, while every
    message a worker sends has norm at most tau."""
    problem = problems.logistic_nonconvex(**LOGISTIC)
    h = sim.simulate(problem, Clip21(tau=0.01), TopK(k=1), steps=600, lr=0.5)
    # The control: naive clipping, every worker sending clip_tau(g_i) (no error feedback).
    naive = sim.simulate(problem, "none", Clip(0.01), steps=600, lr=0.5)
    # When written: 0.446 -> 2.4e-14 relative; naive clipping stalls at 0.46 relative.
    assert h.grad_norm_sq[-1] < 1e-8 * h.grad_norm_sq[0]
    assert naive.grad_norm_sq[-1] > 0.1 * naive.grad_norm_sq[0]
    assert h.bits_per_worker[-1] == 600 * 32 * problem.d  # dense float32 messages
    g = problem.grads(problem.x0)[0]
    method = Clip21(tau=0.01)
    codec = Codec(method.wire_compressor(TopK(k=1)), problem.d, g.dtype)  # it sends with its clipping
    message = method.encode(g, {"h_local": torch.zeros_like(g)}, codec, Worker(0, 1))
    assert message.view(torch.float32).norm() <= 0.01 * (1 + 1e-6)


def test_lag_skips_communication_without_slowing_down():
    """3PC (Richtarik et al. 2022, arXiv 2202.00998): lazy aggregation sends only when the
    local gradient moved enough, reaching the same accuracy with fewer bits than sending
    every step (zeta = 0 is gradient descent with dense messages)."""
    problem = problems.logistic_nonconvex(**LOGISTIC)
    lr = 20 * sim.ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    reached = {}
    for zeta in (0.0, 16.0):
        h = sim.simulate(problem, LAG(zeta), TopK(k=1), steps=300, lr=lr)
        step = sim.steps_to_reach(h, 1e-6 * h.grad_norm_sq[0])
        assert step is not None, zeta
        reached[zeta] = (step, h.bits_per_worker[step])
    # When written: 79 steps / 53,056 bits with zeta 0, 76 steps / 13,920 bits with zeta 16.
    assert reached[16.0][0] <= 1.1 * reached[0.0][0]
    assert reached[16.0][1] < 0.5 * reached[0.0][1]


def lazy_bits_to_target(problem, method, compressor, lr, steps=140):
    h = sim.simulate(problem, method, compressor, steps=steps, lr=lr)
    reached = sim.steps_to_reach(h, 1e-6 * h.grad_norm_sq[0])
    assert reached is not None, method
    return reached, h.bits_per_worker[reached]


def test_clag_needs_fewer_bits_than_ef21_with_the_same_compressor():
    """3PC (arXiv 2202.00998): CLAG, EF21 whose workers stay silent while their gradient has
    moved little, reaches an accuracy with fewer bits than EF21 with the same compressor.
    Non-convex logistic regression, Top-4 of 20, 16x EF21's theory step (where the
    compression, not the step, limits the run). The control: zeta = 0 (never silent) is EF21
    plus the per-step choice, and needs more bits than EF21."""
    problem = problems.logistic_nonconvex(**LOGISTIC)
    lr = 16 * sim.ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    ef21 = lazy_bits_to_target(problem, "ef21", TopK(k=4), lr)
    clag = lazy_bits_to_target(problem, CLAG(16.0), TopK(k=4), lr)
    never_silent = lazy_bits_to_target(problem, CLAG(0.0), TopK(k=4), lr)
    # When written: EF21 100 steps, 25,984 bits; CLAG (zeta 16) 100 steps, 16,710 bits;
    # zeta 0: 100 steps, 29,184 bits.
    assert clag[0] <= 1.1 * ef21[0]
    assert clag[1] < 0.75 * ef21[1]
    assert never_silent[1] >= ef21[1]


def test_adacgd_beats_its_finer_rungs_but_not_the_cheapest_fixed_level():
    """AdaCGD (Makarenko et al. 2022, arXiv 2211.00188) claims that choosing the compression
    level adaptively beats every fixed level. Same problem and step as CLAG above, the ladder
    Top-1/4/10 of 20, zeta 16 (the best of 1, 4, 16 when written). It needs fewer bits than
    EF21 fixed at Top-4 (or 10, 20), and sends messages of several sizes; but EF21 fixed at
    the cheapest rung, Top-1, needs fewer bits than AdaCGD: against the best fixed level the
    claim does not reproduce here."""
    problem = problems.logistic_nonconvex(**LOGISTIC)
    lr = 16 * sim.ef21_stepsize(1 / problem.d, problem.L, problem.L_qm)
    method = AdaCGD(ratios=(0.05, 0.2, 0.5), zeta=16.0)
    h = sim.simulate(problem, method, TopK(k=1), steps=140, lr=lr)
    reached = sim.steps_to_reach(h, 1e-6 * h.grad_norm_sq[0])
    assert reached is not None
    ada = h.bits_per_worker[reached]
    top4 = lazy_bits_to_target(problem, "ef21", TopK(k=4), lr)[1]
    top1 = lazy_bits_to_target(problem, "ef21", TopK(k=1), lr)[1]
    # When written: AdaCGD 101 steps, 16,268 bits; EF21 Top-4 25,984; EF21 Top-1 111 steps,
    # 7,680 bits.
    assert ada < 0.75 * top4
    assert top1 < ada  # does not reproduce against the cheapest fixed level
    per_step = [b - a for a, b in zip(h.bits_per_worker[1:reached], h.bits_per_worker[2:reached])]
    assert len({round(b) for b in per_step}) >= 3  # messages of several sizes, and silences


def test_minibatches_need_a_problem_with_data():
    with pytest.raises(ValueError, match=r"no minibatch gradients \(batch_size=4\)"):
        sim.simulate(problems.beznosikov_counterexample(), "ef21", TopK(k=1), steps=1, lr=0.1, batch_size=4)


def test_figures_command_writes_pngs(tmp_path, capsys):
    """Two figures at a tiny scale (drawing all of them takes about a minute); every figure
    is shown in the simulator's page, docs/simulator.md."""
    figures.main(["--out", str(tmp_path), "--scale", "0.01", "--only", "counterexample", "newton"])
    assert capsys.readouterr().out.split() == [
        "wrote",
        str(tmp_path / "counterexample.png"),
        "wrote",
        str(tmp_path / "newton.png"),
    ]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("counterexample.png", "newton.png"))
    page = (Path(__file__).parents[2] / "docs" / "simulator.md").read_text()
    assert [name for name in figures.FIGURES if f"(figures/{name}.png)" not in page] == []
    with pytest.raises(ValueError, match=r"unknown figure\(s\) \['nope'\]"):
        figures.figures(tmp_path, only=["nope"])


def test_unbiased_compressors_make_plain_compressed_sgd_converge_on_the_counterexample():
    """Horvath & Richtarik 2020 ("A Better Alternative to Error Feedback", arXiv 2006.11077):
    the compressor induced by Top-k, C(x) = TopK(x) + RandK_unbiased(x - TopK(x)), is unbiased,
    so compressed SGD without error feedback converges where Top-k alone diverges."""
    problem = problems.beznosikov_counterexample()
    topk = sim.simulate(problem, "none", TopK(k=1), steps=400, lr=0.05)
    assert topk.x_norm[-1] > 1e6 * topk.x_norm[0]
    for compressor in (
        Induced(TopK(k=1), RandK(k=1, unbiased=True)),
        RandK(k=1, unbiased=True),
        Natural(block=32),
        QSGD(levels=1, block=32),
    ):
        h = sim.simulate(problem, "none", compressor, steps=400, lr=0.05)
        # When written: 1.73 -> below 1e-10 for each (an interpolating problem: linear rate).
        assert h.x_norm[-1] < 1e-6 * h.x_norm[0], compressor


def test_induced_compressor_needs_fewer_bits_than_rand_k_where_energy_concentrates():
    """Horvath & Richtarik 2020 (arXiv 2006.11077), the second half of their claim: the
    induced compressor's variance is Rand-k's on what Top-k leaves, so where the
    gradient's energy sits in a few coordinates (curvature over six decades, the same
    coordinates on every worker, one common minimiser) it reaches an accuracy with fewer
    bits than Rand-k alone, each at its best step size of a grid. Both send 320 bits per
    step here: Rand-10 ten values (shared indices), Top-2 + Rand-6 two values and indices,
    then six values. "Reaches" means stays below the target for 200 steps: the induced
    run is the noisier one. efcomm's Rand-k shares its indices across ranks where the
    paper's compressors are independent per worker; with one common minimiser neither
    compressor is noisy at the optimum, so the sharing does not decide this comparison."""
    problem = problems.ill_conditioned_quadratic()

    def bits_to_stay_below(compressor, lr, target=1e-4, window=200):
        h = sim.simulate(problem, "none", compressor, steps=650, lr=lr)
        g = h.grad_norm_sq
        hit = next((t for t in range(len(g) - window) if max(g[t : t + window]) <= target * g[0]), None)
        return math.inf if hit is None else h.bits_per_worker[hit]

    # each at its best step of the grid (0.2, 0.3, 0.5, 0.7), found when written
    rand = bits_to_stay_below(RandK(k=10, unbiased=True), lr=0.2)
    induced = bits_to_stay_below(Induced(TopK(k=2), RandK(k=6, unbiased=True)), lr=0.5)
    # Measured (issue 22 re-run): Rand-10 133,760 bits (lr 0.2), induced 100,480 (lr 0.5): 1.33x
    # fewer.
    assert induced * 1.2 < rand < math.inf


def test_induced_compressor_does_not_beat_top_k_with_error_feedback_at_equal_bits():
    """The paper's own comparison (arXiv 2006.11077): the induced compressor replaces error
    feedback with Top-k, with independent compressors per worker. At equal bits per step
    (256: Top-1 and Rand-3 with independent indices, against Top-4 with EF) on the same
    problem, Top-4 with EF stays below 1e-4 relative with fewer bits: does not reproduce here.
    Steps from the grid 0.5, 0.7, 1.0 when written: the induced run's best (0.7), EF's (1.0)."""
    problem = problems.ill_conditioned_quadratic()

    def bits_to_stay_below(method, compressor, lr, target=1e-4, window=200):
        h = sim.simulate(problem, method, compressor, steps=360, lr=lr)
        g = h.grad_norm_sq
        hit = next((t for t in range(len(g) - window) if max(g[t : t + window]) <= target * g[0]), None)
        assert h.bits_per_worker[2] - h.bits_per_worker[1] == 256, compressor
        return math.inf if hit is None else h.bits_per_worker[hit]

    induced = bits_to_stay_below("none", Induced(TopK(k=1), RandK(k=3, unbiased=True, shared=False)), lr=0.7)
    ef = bits_to_stay_below("ef", TopK(k=4), lr=1.0)
    # When written: induced 32,512 bits (lr 0.7; 44,032 at 0.5, 45,824 at 1.0), EF Top-4 22,272.
    assert ef * 1.2 < induced < math.inf


def test_ef21_converges_with_every_contractive_compressor():
    """EF21's guarantee needs only a contractive C: every one of them drives the gradient of
    the non-convex logistic problem (d = 50) to zero."""
    problem = problems.logistic_nonconvex(**LOGISTIC)
    compressors = (
        RandK(k=4),
        RandK(k=4, window=True),
        ScaledSign(block=32),
        Natural(block=32),
        Int8(block=32),
        FP8(block=32),
        QSGD(levels=1, block=32).scaled(),
        Induced(TopK(k=2), RandK(k=4, unbiased=True)).scaled(),
    )
    for compressor in compressors:
        h = sim.simulate(problem, "ef21", compressor, steps=200, lr=0.5)
        # Measured (issue 22 re-run): 0.446 -> below 4e-11 (relative) for each.
        assert h.grad_norm_sq[-1] < 1e-8 * h.grad_norm_sq[0], compressor


def test_motef_converges_under_heterogeneity_where_ef_stalls():
    """Islamov, Gao, Stich 2024 (arXiv 2405.20114): MoTEF needs no bound on data
    heterogeneity. On the heterogeneous quadratics with Top-2 of 20 and one step size, the
    paper's form converges (its average iterate) and the workers' iterates reach consensus;
    the shared-iterate form the hook runs converges too; classic EF stalls."""
    problem = problems.quadratic(HETEROGENEOUS_L, d=20)
    paper = sim.simulate(problem, MoTEF(gamma=0.2, per_worker=True), TopK(k=2), steps=500, lr=0.01)
    shared = sim.simulate(problem, MoTEF(gamma=0.1), TopK(k=2), steps=500, lr=0.01)
    ef = sim.simulate(problem, "ef", TopK(k=2), steps=500, lr=0.01)
    # When written: from 1085, paper 1.0e-6 (consensus 2.1e-5), shared 8.8e-7, ef 0.11.
    assert paper.grad_norm_sq[-1] < 1e-8 * paper.grad_norm_sq[0]
    assert paper.consensus[-1] < 1e-4
    assert shared.grad_norm_sq[-1] < 1e-8 * shared.grad_norm_sq[0]
    assert ef.grad_norm_sq[-1] > 1e-2
    assert paper.bits_per_worker[-1] == 500 * 2 * 8 * 16  # two Top-2 messages per step
    # one dense start (20 floats), then one Top-2 message per step
    assert shared.bits_per_worker[-1] == 20 * 32 + 499 * 8 * 16


def test_motef_momentum_lowers_the_noise_floor():
    """MoTEF's momentum with stochastic gradients (arXiv 2405.20114; the authors' momentum
    experiment, github.com/mlolab/MoTEF synthetic/experiments/momentum.py, sweeps lambda over
    1, 0.5, 0.05, 0.005 with gamma 0.1). Batch size 1, variance 1, Top-2, EF21's theory step:
    with lambda 0.05 MoTEF settles far below EF21; with lambda 1 (no momentum) it does not,
    so the gain is the momentum's."""
    compressor = TopK(k=2)
    lr = sim.ef21_stepsize(compressor.alpha(NOISY.d), NOISY.L, NOISY.L_am)
    runs = (("ef21", "ef21"), ("momentum", MoTEF(gamma=0.1, lam=0.05)), ("none", MoTEF(gamma=0.1, lam=1.0)))
    floors = {name: noise_floor(m, compressor, lr, steps=900, tail=300) for name, m in runs}
    # Measured (issue 22 re-run): ef21 0.44, MoTEF lambda 0.05 0.066, lambda 1 0.73.
    assert floors["momentum"] < 0.3 * floors["ef21"]
    assert floors["none"] > 0.5 * floors["ef21"]


def test_motef_shared_form_with_identity_is_momentum_sgd():
    """Without compression, the shared-iterate form's direction is the mean momentum
    M = (1 - lam) M + lam mean g: heavy-ball SGD written as an average."""
    problem = problems.quadratic([1.0, 4.0, 9.0], d=8)
    lam, lr = 0.3, 0.05
    h = sim.simulate(problem, MoTEF(gamma=0.5, lam=lam), efcomm.Identity(), steps=50, lr=lr)
    x = problem.x0.double()
    m = sum(g.double() for g in problem.grads(x)) / problem.n
    x = x - lr * m
    for _ in range(49):
        m = (1 - lam) * m + lam * sum(g.double() for g in problem.grads(x)) / problem.n
        x = x - lr * m
    # float32 state against a float64 reference: a few roundings per step
    assert h.x_norm[-1] == pytest.approx(float(x.norm()), rel=1e-5)
    assert h.x_norm[-1] != pytest.approx(h.x_norm[0], rel=1e-2)  # it moved


def test_motef_paper_form_is_rejected_by_the_hook():
    with pytest.raises(ValueError, match=r"keeps a different model on every worker.*efcomm.sim.*per_worker=False"):
        efcomm.EFState(MoTEF(per_worker=True))
    assert efcomm.EFState("motef").method == "motef"
