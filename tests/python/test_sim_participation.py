"""Partial participation under arbitrary distributions over the workers (efcomm.sim.participation)."""

import pytest
import torch

from efcomm import Identity, Induced, RandK, TopK, sim
from efcomm.sim import problems
from efcomm.sim.participation import Sampling, dcsgd_pp, ef21_pp


# A correlated distribution: worker 0 alone, workers 1 and 2 together, or everyone.
CORRELATED = Sampling.explicit(3, [[0], [1, 2], [0, 1, 2]], [0.3, 0.5, 0.2])
INDUCED = Induced(TopK(k=1), RandK(k=1, unbiased=True))


@pytest.mark.parametrize(
    "sampling", [CORRELATED, Sampling.independent([0.2, 0.5, 1.0]), Sampling.nice(3, 2)], ids=lambda s: s.description
)
def test_the_reweighted_sum_is_unbiased_for_every_distribution(sampling):
    """E[sum_{i in S} v_i / (n p_i)] = (1/n) sum_i v_i, computed exactly over the support."""
    v = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = sum(q * sum(w * v[i] for i, w in sampling.weights(subset).items()) for subset, q in sampling.support)
    assert torch.allclose(expected, v.mean(0), atol=1e-12)
    assert CORRELATED.p == pytest.approx([0.5, 0.7, 0.7])


def test_sampling_draws_follow_the_distribution():
    gen = torch.Generator().manual_seed(0)
    draws = [tuple(CORRELATED.draw(gen)) for _ in range(4000)]
    assert set(draws) == {(0,), (1, 2), (0, 1, 2)}
    assert draws.count((1, 2)) / len(draws) == pytest.approx(0.5, abs=0.03)


def test_induced_compressor_converges_with_partial_participation_where_top1_diverges():
    """Horvath & Richtarik 2020 (arXiv 2006.11077) extend compressed SGD with the induced
    (unbiased) compressor to partial participation following an arbitrary distribution over
    the nodes. On the counterexample (every f_i is minimised at 0, so an unbiased method
    converges linearly) and the correlated distribution above, the induced Top-1 converges
    and plain Top-1 diverges."""
    problem = problems.beznosikov_counterexample()
    induced = dcsgd_pp(problem, INDUCED, CORRELATED, steps=300, lr=0.05)
    top1 = dcsgd_pp(problem, TopK(k=1), CORRELATED, steps=300, lr=0.05)
    # When written: ||x|| from 1.73 to 5e-14 (induced) and to 2.4e11 (Top-1).
    assert induced.x_norm[-1] < 1e-9 * induced.x_norm[0]
    assert top1.x_norm[-1] > 1e6 * top1.x_norm[0]


def test_ef21_pp_reaches_the_exact_solution_where_compressed_sgd_stalls():
    """EF21-PP (Fatkhullin et al. 2021, arXiv 2110.03294): with full gradients and any
    participation probabilities p_i > 0, EF21's error feedback converges to a stationary
    point of the heterogeneous problem; compressed SGD with partial participation (unbiased,
    but with the variance of the sampling and the compressor at the optimum) stalls at a
    floor that grows as fewer workers take part. The step is EF21's with the arithmetic mean
    of the L_i (arXiv 2402.10774 carries it to partial participation); that it is faster
    than the quadratic-mean step by their ratio holds by construction (steps scale as 1/lr)
    and is not asserted. With p = 1/4 for everyone, only the participants send and update
    their h_i: EF21-PP reaches the target with under half the bits of full participation
    (a run in which the others updated too would send as much as full participation)."""
    problem = problems.quadratic([1.0, 2.0, 4.0, 8.0], d=10)
    compressor = TopK(k=2)
    lr = sim.ef21_stepsize(compressor.alpha(problem.d), problem.L, problem.L_am)
    floors, bits = [], []
    samplings = (Sampling.independent([1.0] * 4), Sampling.independent([0.25] * 4))
    for sampling in samplings:
        ef21 = ef21_pp(problem, compressor, sampling, steps=450, lr=lr)
        dcsgd = dcsgd_pp(problem, INDUCED, sampling, steps=450, lr=lr)
        # When written: ef21-pp from 12.0 to 1e-9 relative in 354 rounds and 45,632 bits
        # per worker (everyone), 293 rounds and 9,792 bits (p = 1/4).
        reached = sim.steps_to_reach(ef21, 1e-9 * ef21.grad_norm_sq[0])
        assert reached is not None, sampling.description
        bits.append(ef21.bits_per_worker[reached])
        floors.append(sum(dcsgd.grad_norm_sq[-150:]) / 150)
    assert bits[1] < 0.5 * bits[0]
    # When written: the induced compressor's floor 0.11 (everyone), 5.3 (p = 1/4).
    assert floors[0] > 1e-3 * problem.L and floors[1] > 2 * floors[0]


def test_unweighted_aggregation_is_biased_under_non_uniform_participation():
    """The 1 / (n p_i) weights of arbitrary sampling (arXiv 2006.11077's extension) make
    sum_{i in S} C(g_i) / (n p_i) unbiased; the control, plain 1/n over the participants,
    has mean (1/n) sum_i p_i g_i, whose zero is not a stationary point of f when the p_i
    differ and the f_i have different minimisers. Exact gradients (the identity compressor),
    p = 0.2, 0.4, 0.7, 1: the weighted floor shrinks with the step (SGD noise of the
    sampling), the unweighted one stays (bias)."""
    problem = problems.quadratic([1.0, 2.0, 4.0, 8.0], d=10)
    sampling = Sampling.independent([0.2, 0.4, 0.7, 1.0])
    floors = {}
    for name, weights in (("weighted", sampling.weights), ("unweighted", lambda s: {i: 1 / 4 for i in s})):
        run = Sampling(4, sampling.p, sampling.draw, name, sampling.support)
        run.weights = weights  # the control replaces the weights, nothing else
        for lr in (0.04, 0.01):
            trace = dcsgd_pp(problem, Identity(), run, steps=round(8 / lr), lr=lr)
            floors[name, lr] = sum(trace.grad_norm_sq[-round(2 / lr) :]) / round(2 / lr)
    # When written: weighted 0.071 (lr 0.04) and 0.016 (0.01); unweighted 0.53 and 0.58.
    assert floors["weighted", 0.01] < 0.4 * floors["weighted", 0.04]
    assert floors["unweighted", 0.01] > 0.8 * floors["unweighted", 0.04]
    assert floors["unweighted", 0.01] > 10 * floors["weighted", 0.01]


def test_ef21_pp_with_everyone_taking_part_is_ef21():
    problem = problems.quadratic([1.0, 2.0, 4.0, 8.0], d=10)
    lr = sim.ef21_stepsize(0.2, problem.L, problem.L_am)
    pp = ef21_pp(problem, TopK(k=2), Sampling.independent([1.0] * 4), steps=200, lr=lr)
    ef21 = sim.simulate(problem, "ef21", TopK(k=2), steps=200, lr=lr)
    assert pp.grad_norm_sq[:150] == pytest.approx(ef21.grad_norm_sq[:150], rel=1e-4)


def test_samplings_reject_impossible_distributions():
    with pytest.raises(ValueError, match=r"every one of the 2 workers needs a participation probability in \(0, 1\]"):
        Sampling.independent([0.0, 1.0])
    with pytest.raises(
        ValueError, match=r"probs \(\[0.5, 0.6\]\) must be one non-negative number per subset, summing to 1"
    ):
        Sampling.explicit(2, [[0], [1]], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"tau \(4\) must be in \[1, 3\]"):
        Sampling.nice(3, 4)
    assert Sampling.independent([0.5] * 20).support is None  # 2^20 subsets: not listed
