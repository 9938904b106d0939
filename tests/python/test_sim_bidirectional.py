"""Bidirectional compression, bits counted both ways (efcomm.sim.bidirectional)."""

import pytest

from efcomm import Identity, TopK, sim
from efcomm.sim import problems
from efcomm.sim.bidirectional import ef21_bc, total_bits


PROBLEM = problems.logistic_nonconvex(n=4, d=20, m=40)


def test_with_an_identity_broadcast_ef21_bc_is_ef21():
    ref = sim.simulate(PROBLEM, "ef21", TopK(k=2), steps=150, lr=0.5)
    bc = ef21_bc(PROBLEM, TopK(k=2), Identity(), steps=150, lr=0.5)
    reached = sim.steps_to_reach(ref, 1e-6 * ref.grad_norm_sq[0])
    assert reached is not None
    # the same steps; float32 sums in another order (h += c_i / n worker by worker)
    assert bc.grad_norm_sq[:reached] == pytest.approx(ref.grad_norm_sq[:reached], rel=1e-3)
    assert bc.bits_down[-1] == 32 * 20 * 151  # a dense start, then a dense broadcast per step


def test_compressing_the_broadcast_cuts_the_bits_both_ways():
    """EF21-BC (Fatkhullin et al. 2021, arXiv 2110.03294): the server's own EF21 mechanism on
    what it broadcasts keeps EF21's convergence, so the bits a worker sends and receives to
    reach an accuracy fall when the broadcast is compressed too."""
    runs = {
        name: ef21_bc(PROBLEM, TopK(k=2), server, steps=150, lr=0.5)
        for name, server in (("dense", Identity()), ("top2", TopK(k=2)))
    }
    reached = {name: sim.steps_to_reach(t, 1e-8 * t.grad_norm_sq[0]) for name, t in runs.items()}
    assert None not in reached.values(), reached
    bits = {name: total_bits(runs[name], reached[name]) for name in runs}
    # When written (n=4, d=20): dense broadcast 110 steps, 14,720 bits up + 71,040 down;
    # Top-2 both ways 118 steps, 15,744 + 15,744 (2.7x fewer in all).
    assert reached["top2"] <= 1.3 * reached["dense"]
    assert bits["top2"] < 0.5 * bits["dense"]
    top2 = runs["top2"]
    assert top2.bits_down[reached["top2"]] == pytest.approx(top2.bits_per_worker[reached["top2"]])  # same message size
