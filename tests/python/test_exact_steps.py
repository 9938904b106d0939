"""The product's claims pinned by values, in one process (efcomm.cluster): each method's
update rule against a plain-torch reference (tests/python/method_reference.py), the dense
start's output, the step after an overflow, and the state carried across bucket rebuilds,
all compared bit for bit. The training tests (test_engine.py) show that the methods train;
these show that they compute what the README says, step by step."""

import math

import pytest
import torch
from method_reference import DENSE_START, LAZY, ReferenceRun, dense_mean

import efcomm
from efcomm.bucket_state import BucketState
from efcomm.cluster import Cluster, flat_signature, outputs_identical
from efcomm.methods import CLAG, LAG, AdaCGD, Clip21, EControl, EF21SGDM, EF21W, MoTEF

NUMEL, K, WORLD = 16, 4, 2

# name, the method as efcomm takes it, its parameters for the reference (Top-4 of 16 entries
# for the methods that take a compressor). With gradients() below they make every branch run
# within STEPS (checked): Clip21 clips and does not; the lazy methods have steps with no
# sender, one and both; AdaCGD uses every rung.
METHODS = [
    ("ef21", "ef21", {}),
    ("ef21-sgdm", EF21SGDM(eta=0.3), {"eta": 0.3}),
    ("econtrol", EControl(), {}),
    ("ef21-w", EF21W([0.75, 0.25]), {"weights": [0.75, 0.25]}),
    ("clip21", Clip21(tau=2.0), {"tau": 2.0}),
    ("lag", LAG(zeta=1.0), {"zeta": 1.0}),
    ("clag", CLAG(zeta=1.0), {"zeta": 1.0}),
    ("adacgd", AdaCGD(ratios=(0.125, 0.25, 0.5), zeta=1.0), {"zeta": 1.0, "ks": [2, 4, 8]}),
    ("ef", "ef", {}),
    ("none", "none", {}),
    ("motef", MoTEF(gamma=0.5, lam=0.5), {"gamma": 0.5, "lam": 0.5}),
]
STEPS = 5  # the start (dense for most methods) and four more


def gradients(step: int, rank: int, numel: int = NUMEL) -> torch.Tensor:
    """Each rank drifts steadily from its own base (rank 1 from step 1 on), with noise: the
    lazy methods' ranks are silent at some steps and send at others, alone or together."""
    base = torch.randn(numel, generator=torch.Generator().manual_seed(7 + rank))
    drift = torch.randn(numel, generator=torch.Generator().manual_seed(99 + rank))
    noise = torch.randn(numel, generator=torch.Generator().manual_seed(1000 * rank + step))
    if rank == 0:
        return base + 0.5 * step * drift + 0.1 * noise
    return base + 0.3 * max(0, step - 1) * drift + 0.3 * noise


def cluster_for(method, world: int = WORLD) -> Cluster:
    """Every bucket compressed (16 entries); ``none`` takes Top-k here (allow_biased)."""
    options = dict(min_compress_numel=1, always_compress=True, allow_biased=True)
    return Cluster.create(world, method, efcomm.TopK(k=K), **options)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert torch.equal(actual, expected), (
        f"{what}: max difference {(actual.double() - expected.double()).abs().max().item():.3g}"
    )


@pytest.mark.parametrize("name,method,params", METHODS, ids=[m[0] for m in METHODS])
def test_each_method_is_its_update_rule_bit_for_bit(name, method, params):
    """Outputs, every state tensor and the bytes each rank sent, at the start and at each
    step after it, are the plain-torch reference's. A sign flipped in any update (e.g.
    EControl's error feedback, whose effect starts at the second step) fails here."""
    cluster = cluster_for(method)
    reference = ReferenceRun(name, WORLD, NUMEL, K, **params)
    signature = flat_signature(NUMEL, torch.float32)
    for step in range(STEPS):
        grads = [gradients(step, r) for r in range(WORLD)]
        outs = [o.clone() for o in cluster.step_bucket([g.clone() for g in grads], signature)]
        expected = reference.step(grads)
        assert outputs_identical(outs)
        for rank in range(WORLD):
            assert_same_bits(outs[rank], expected[rank], f"{name} step {step} rank {rank} output")
            state = cluster.states[rank]
            tensors = state.buckets[signature].tensors if state.buckets else {}
            assert sorted(tensors) == sorted(reference.states[rank]), (name, sorted(tensors))
            for key, tensor in tensors.items():
                assert_same_bits(tensor, reference.states[rank][key], f"{name} step {step} rank {rank} {key}")
            assert state.stats.bytes_sent == reference.bytes_sent[rank], (name, step, rank)
    stats = cluster.states[0].stats
    assert stats.initialisations == int(name in DENSE_START) and stats.steps == STEPS
    # the gradients make every branch of the rule run
    if name == "clip21":
        assert set(reference.events) == {True, False}
    if name in LAZY:  # steps with no sender, with one, with both
        assert {sum(map(bool, choices)) for choices in reference.events} == {0, 1, 2}
    if name == "adacgd":  # every rung
        assert {c for choices in reference.events for c in choices} == {0, 1, 2, 3}


def test_the_reference_detects_a_flipped_sign_in_econtrols_error_feedback():
    """The check above is sharp: EControl with the error fed back negatively (eta -> -eta)
    differs from the reference from the second step after the start on."""
    flipped = ReferenceRun("econtrol", WORLD, NUMEL, K, eta=-0.25)
    reference = ReferenceRun("econtrol", WORLD, NUMEL, K)
    differs = []
    for step in range(STEPS):
        grads = [gradients(step, r) for r in range(WORLD)]
        a, b = flipped.step(grads), reference.step(grads)
        differs.append(not torch.equal(a[0], b[0]))
    assert differs == [False, False, True, True, True]


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("name", sorted(DENSE_START))
def test_the_dense_start_outputs_the_exact_mean(name, world):
    """The first step of a dense-start method is the mean of the ranks' gradients: with 2 or
    4 ranks (g_i / n exact), the sum of the g_i / n in rank order; with 2 ranks that is the
    exact mean rounded once to float32."""
    method = dict((m[0], m[1]) for m in METHODS)[name]
    if name == "ef21-w":
        method = EF21W([0.4, 0.3, 0.2, 0.1] if world == 4 else [0.75, 0.25])
    cluster = cluster_for(method, world)
    grads = [gradients(0, r % 2) * (1 + r) for r in range(world)]
    outs = cluster.step_bucket([g.clone() for g in grads])
    assert outputs_identical(outs)
    assert_same_bits(outs[0], dense_mean(grads), name)
    if world == 2:
        exact = ((grads[0].double() + grads[1].double()) / 2).float()
        assert_same_bits(outs[0], exact, name)
    assert cluster.states[0].stats.initialisations == 1
    assert cluster.states[0].stats.bytes_sent == NUMEL * 4


# Methods whose state an overflow poisons (the lazy ones instead keep a non-finite rank
# silent, and their aggregate stays finite).
OVERFLOW_METHODS = [m for m in METHODS if m[0] not in LAZY]


@pytest.mark.parametrize("name,method,params", OVERFLOW_METHODS, ids=[m[0] for m in OVERFLOW_METHODS])
def test_the_step_after_an_overflow_starts_the_method_afresh(name, method, params):
    """Rank 1's gradient holds inf at step 3: that step's aggregate is non-finite on every
    rank, and step 4 is the method's first step on step 4's gradients, bit for bit: for the
    dense-start methods the exact mean, with h_i = g_i (MoTEF: M_i = V_i = G_i = g_i)."""
    cluster = cluster_for(method)
    signature = flat_signature(NUMEL, torch.float32)
    for step in range(3):
        cluster.step_bucket([gradients(step, r) for r in range(WORLD)], signature)
    bad = [gradients(3, r) for r in range(WORLD)]
    bad[1][5] = float("inf")
    outs = cluster.step_bucket(bad, signature)
    assert all(not torch.isfinite(o).all() for o in outs)
    grads = [gradients(4, r) for r in range(WORLD)]
    outs = [o.clone() for o in cluster.step_bucket([g.clone() for g in grads], signature)]
    fresh = ReferenceRun(name, WORLD, NUMEL, K, **params)
    expected = fresh.step(grads)
    for rank in range(WORLD):
        assert_same_bits(outs[rank], expected[rank], f"{name} rank {rank} output after the overflow")
        tensors = cluster.states[rank].buckets[signature].tensors if fresh.states[rank] else {}
        for key, tensor in tensors.items():
            assert_same_bits(tensor, fresh.states[rank][key], f"{name} rank {rank} {key} after the overflow")
    if name in DENSE_START:
        assert_same_bits(outs[0], ((grads[0].double() + grads[1].double()) / 2).float(), name)
        local = "G" if name == "motef" else "h_local"
        if name != "ef21-w":
            for rank in range(WORLD):
                assert_same_bits(cluster.states[rank].buckets[signature].tensors[local], grads[rank], name)
    stats = cluster.states[0].stats
    assert stats.nonfinite_resets == 1 and stats.initialisations == 2 * int(name in DENSE_START)


# ---- bucket rebuilds: the state follows the parameters --------------------------------------

PARAMS = {"a": (3, 4), "b": (5,), "c": (2, 3), "d": (7,)}  # 30 entries


def layout(names: list) -> tuple:
    return ("torch.float32", sum(math.prod(PARAMS[n]) for n in names), tuple((n, PARAMS[n]) for n in names))


def param_gradients(step: int, rank: int) -> dict:
    gen = torch.Generator().manual_seed(500 * step + rank)
    return {n: torch.randn(math.prod(PARAMS[n]), generator=gen) for n in sorted(PARAMS)}


def bucket_of(grads: dict, names: list) -> torch.Tensor:
    return torch.cat([grads[n] for n in names])


def by_param(flat: torch.Tensor, names: list) -> dict:
    out, offset = {}, 0
    for n in names:
        size = math.prod(PARAMS[n])
        out[n] = flat[offset : offset + size]
        offset += size
    return out


def step_layout(cluster: Cluster, step: int, buckets: list) -> dict:
    """One training step over ``buckets`` (lists of names); rank 0's output, by parameter
    (clones), after checking that the ranks agree."""
    grads = [param_gradients(step, r) for r in range(cluster.world)]
    outputs = cluster.step([(layout(names), [bucket_of(g, names) for g in grads]) for names in buckets])
    result = {}
    for names, outs in zip(buckets, outputs):
        assert outputs_identical(outs)
        result.update({n: t.clone() for n, t in by_param(outs[0], names).items()})
    return result


def state_by_param(cluster: Cluster, rank: int) -> dict:
    """{(tensor name, parameter): entries} of a rank's states."""
    out = {}
    for bucket in cluster.states[rank].buckets.values():
        names = [n for n, _ in bucket.params]
        for key, tensor in bucket.tensors.items():
            out.update({(key, n): t.clone() for n, t in by_param(tensor, names).items()})
    return out


REBUILD_METHODS = ["ef21", EF21SGDM(eta=0.3), "econtrol", "ef", MoTEF(gamma=0.5, lam=0.5)]


@pytest.mark.parametrize("method", REBUILD_METHODS, ids=str)
def test_a_reordering_rebuild_continues_the_run_bit_for_bit(method):
    """DDP rebuilds its buckets after the first iteration, in another parameter order. The
    same parameters in another order are the same Top-k run, entry for entry: with the state
    carried over by parameter name, every parameter's output and state match the run that
    kept its layout, bit for bit (carried over by position, another parameter's h lands in
    the bucket)."""
    old, new = ["a", "b", "c", "d"], ["d", "b", "a", "c"]
    kept = Cluster.create(WORLD, method, efcomm.TopK(0.25), min_compress_numel=1)
    rebuilt = Cluster.create(WORLD, method, efcomm.TopK(0.25), min_compress_numel=1)
    for step in range(6):
        a = step_layout(kept, step, [old])
        b = step_layout(rebuilt, step, [old] if step < 3 else [new])
        for n in PARAMS:
            assert_same_bits(b[n], a[n], f"step {step} parameter {n}")
    for rank in range(WORLD):
        a, b = state_by_param(kept, rank), state_by_param(rebuilt, rank)
        assert a.keys() == b.keys()
        for key in a:
            assert_same_bits(b[key], a[key], f"rank {rank} {key}")
    stats = rebuilt.states[0].stats
    assert stats.relayouts == 1 and stats.initialisations == kept.states[0].stats.initialisations


def test_a_rebuild_into_other_buckets_carries_each_parameters_state_entry_by_entry():
    """A rebuild that splits one bucket into two, each in another order: each new bucket's
    state is the old state's entries of its parameters, by name. The check steps the
    rebuilt run next to one whose new buckets were given those entries by hand."""
    old, new = ["a", "b", "c", "d"], [["c", "a"], ["d", "b"]]
    options = dict(min_compress_numel=1)
    rebuilt = Cluster.create(WORLD, "econtrol", efcomm.TopK(0.25), **options)
    for step in range(3):
        step_layout(rebuilt, step, [old])
    saved = [state_by_param(rebuilt, rank) for rank in range(WORLD)]
    (steps,) = {b.steps for b in rebuilt.states[0].buckets.values()}
    by_hand = Cluster.create(WORLD, "econtrol", efcomm.TopK(0.25), **options)
    by_hand.step([(layout(old), [bucket_of(param_gradients(0, r), old) for r in range(WORLD)])])  # joins
    for rank, state in enumerate(by_hand.states):
        state.buckets.clear()
        for names in new:
            tensors = {key: torch.cat([saved[rank][(key, n)] for n in names]) for key in ("e", "h_local", "h")}
            state.buckets[layout(names)] = BucketState(layout(names), tensors, steps=steps)
    for step in range(3, 6):
        a = step_layout(by_hand, step, new)
        b = step_layout(rebuilt, step, new)
        for n in PARAMS:
            assert_same_bits(b[n], a[n], f"step {step} parameter {n}")
    for rank in range(WORLD):
        a, b = state_by_param(by_hand, rank), state_by_param(rebuilt, rank)
        for key in a:
            assert_same_bits(b[key], a[key], f"rank {rank} {key}")
    assert rebuilt.states[0].stats.relayouts == 2 and rebuilt.states[0].stats.initialisations == 1
