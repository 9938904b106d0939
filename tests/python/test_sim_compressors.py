"""Issue 14 item 5, the compressors of the papers' settings: Rand-k with independent per-rank
indices beside the shared one, and non-uniform (importance-sampled) Rand-k."""

import torch

from efcomm import NonUniformRandK, RandK, TopK, sim
from efcomm.sim import problems
from efcomm.compressors import Context

PROBLEM = problems.quadratic([1.0, 2.0, 4.0, 8.0], d=40)  # four workers, four minimisers


def tail(history, k=100):
    return sum(history.grad_norm_sq[-k:]) / k


def test_independent_rand_k_leaves_the_noise_floor_that_shared_indices_remove():
    """Compressed SGD (DCSGD) with an unbiased compressor converges to a neighbourhood whose
    size grows with omega and with the gradients' spread at the optimum, (1/n) sum_i
    ||grad f_i(x*)||^2 (Khirirat, Feyzmahdavian, Johansson 2018, arXiv 1806.06573, for
    independent compressors per worker). efcomm's default Rand-k shares its indices: the mean
    of the messages is the Rand-k of the mean gradient, which vanishes at x*, so the floor
    goes; with independent indices (shared=False, the papers' setting) it stays."""
    runs = {
        shared: sim.simulate(PROBLEM, "none", RandK(k=4, unbiased=True, shared=shared), steps=700, lr=0.02)
        for shared in (True, False)
    }
    # When written: shared 6.6e-9, independent 3.5 (mean of the last 100 of 700 steps; at lr
    # 0.01 and 1500 steps 1.4e-9 and 1.76: the floor falls with the step, as the theory says).
    assert tail(runs[True]) < 1e-6
    assert tail(runs[False]) > 1e-2
    # both send 4 values a step; the independent messages add their 4 int32 indices
    assert runs[False].bits_per_worker[-1] == 2 * runs[True].bits_per_worker[-1]


def _mean_error(compressor, x, draws=400):
    errors = []
    for t in range(draws):
        ctx = Context(seed=5, step=t, rank=1)
        out = torch.zeros_like(x)
        compressor.decode_add_(out, compressor.encode_(x, None, ctx).unsqueeze(0), ctx)
        errors.append(float((out.double() - x.double()).square().sum()))
    errors = torch.tensor(errors, dtype=torch.float64)
    return float(errors.mean()), float(errors.std() / draws**0.5)


def test_non_uniform_rand_k_has_the_variance_of_importance_sampling():
    """k draws with probabilities |x_j| / ||x||_1 give E||C(x) - x||^2 = (||x||_1^2 -
    ||x||_2^2) / k: far below uniform Rand-k's (d/k - 1) ||x||^2 when the energy sits in a
    few coordinates (here ten of 1000 hold 99.9% of it)."""
    x = torch.cat([torch.full((10,), 10.0), torch.full((990,), 0.01)])
    k = 20
    mean, se = _mean_error(NonUniformRandK(k=k), x)
    predicted = (float(x.abs().sum()) ** 2 - float(x.square().sum())) / k
    assert abs(mean - predicted) <= 5 * se + 1e-6 * predicted
    uniform, _ = _mean_error(RandK(k=k, unbiased=True, shared=False), x)
    # When written: importance sampling 561 +- 12 (predicted 554), uniform 5.4e4 (predicted 4.9e4).
    assert mean * 50 < uniform


def test_non_uniform_rand_k_needs_fewer_bits_where_energy_concentrates():
    """On the ill-conditioned quadratics (curvature over six decades, one minimiser) compressed
    SGD with importance-sampled Rand-k reaches ||grad f||^2 <= 1e-4 ||grad f(x_0)||^2 with far
    fewer bits than uniform Rand-k of the same k (which does not get there in 300 steps), both
    with per-rank draws."""
    problem = problems.ill_conditioned_quadratic()

    def bits_to_reach(compressor, lr):
        h = sim.simulate(problem, "none", compressor, steps=300, lr=lr)
        t = sim.steps_to_reach(h, 1e-4 * h.grad_norm_sq[0])
        return None if t is None else h.bits_per_worker[t]

    nonuniform = bits_to_reach(NonUniformRandK(k=4), 0.7)
    uniform = bits_to_reach(RandK(k=4, unbiased=True, shared=False), 0.1)
    # When written: importance sampling 32,256 bits in 126 steps (lr 0.7; 177 steps at 0.5);
    # uniform Rand-4 not within 600 steps at any of 0.02, 0.05, 0.1 (at 0.1 it ends 600 steps
    # at 2e-4 of the start; 0.2 diverges).
    assert nonuniform is not None
    assert uniform is None


def test_non_uniform_rand_1_without_feedback_against_top_1_with_it_on_the_counterexample():
    """The induced-compressor paper's experiment (Horvath & Richtarik 2020, arXiv 2006.11077):
    on Example 1 of Beznosikov et al. 2020 (efcomm.sim.problems.beznosikov_counterexample),
    NU Rand-1 without error feedback against Top-1 with it, 100 steps. At lr 0.05 (the
    counterexample tests' step) the unbiased compressor is far ahead, as the paper shows.
    Two controls: at each one's best step of the grid 0.05, 0.07, 0.1, Top-1 with EF is
    ahead (NU Rand-1 diverges at 0.1): the claim holds at a fixed step, not tuned; and
    uniform Rand-1 with independent indices does as well as NU Rand-1 at 0.05: on this
    3-dimensional problem the unbiasedness, not the sampling by magnitude, does the work."""
    problem = problems.beznosikov_counterexample()
    final = {}
    for lr in (0.05, 0.07, 0.1):
        final["nu", lr] = sim.simulate(problem, "none", NonUniformRandK(k=1), steps=100, lr=lr).x_norm[-1]
        final["ef", lr] = sim.simulate(problem, "ef", TopK(k=1), steps=100, lr=lr).x_norm[-1]
    uniform = sim.simulate(problem, "none", RandK(k=1, unbiased=True, shared=False), steps=100, lr=0.05).x_norm[-1]
    # When written (||x_0|| = 1.73): lr 0.05: NU Rand-1 3.5e-5, Top-1 + EF 1.6e-3; lr 0.07:
    # 0.25 and 7.6e-5; lr 0.1: 3e14 and 1.4e-7; uniform Rand-1 at 0.05: 3.3e-5.
    assert final["nu", 0.05] < 0.1 * final["ef", 0.05]
    best_nu = min(v for (name, _), v in final.items() if name == "nu")
    best_ef = min(v for (name, _), v in final.items() if name == "ef")
    assert best_ef < 0.1 * best_nu  # tuned, the claim does not reproduce
    assert uniform < 3 * final["nu", 0.05]
