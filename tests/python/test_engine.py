"""The step logic of the hook, run in one process (efcomm.engine with the in-process
transport): every method and compressor trains with ranks bitwise identical, resumes
exactly, survives non-finite steps and bucket layout changes. tests/python/test_hook.py
keeps, in real DDP processes, only what DDP itself adds."""

import math

import pytest
import torch
from inprocess import LocalTraining, run_local

import efcomm
from efcomm.cluster import Cluster, flat_signature, outputs_identical
from efcomm.engine import AllGather, BucketInput, bucket_step
from efcomm.methods import CLAG, EF21W, LAG, AdaCGD, Clip21, Worker

# EF21 with Top-10% trains as well as exact averaging after STEPS steps (the demo's MLP and
# data, SGD with lr 0.05 and momentum 0.9), within these margins.
STEPS = 100
FAST = {"lr": 0.05}
OWN_MOMENTUM = {"momentum": 0.0, "lr": 0.5}  # EF21-SGDM and MoTEF: their momentum replaces SGD's
LOSS_MARGIN = 0.15
ACCURACY_MARGIN = 0.05


def assert_ranks_identical(results):
    for r in results[1:]:
        assert torch.equal(r.params, results[0].params)


def assert_same_runs(runs_a, runs_b):
    """Bit-for-bit the same parameters and error-feedback state on every rank."""
    for a, b in zip(runs_a, runs_b):
        assert torch.equal(a.params, b.params)
        buckets_a = {tuple(map(str, x["signature"])): x for x in a.ef_state["buckets"]}
        buckets_b = {tuple(map(str, x["signature"])): x for x in b.ef_state["buckets"]}
        assert buckets_a.keys() == buckets_b.keys() and len(buckets_a) >= 1
        for signature, saved in buckets_a.items():
            other = buckets_b[signature]
            assert saved["steps"] == other["steps"]
            assert saved["tensors"].keys() == other["tensors"].keys()
            for name, tensor in saved["tensors"].items():
                assert torch.equal(tensor, other["tensors"][name]), name
            for name, tensor in saved["hints"].items():
                assert torch.equal(tensor, other["hints"][name]), name


@pytest.mark.parametrize("world", [2, 4])
def test_ef21_trains_like_exact_averaging_and_ranks_stay_identical(world):
    dense = run_local(world, STEPS, "dense", **FAST)
    ef21 = run_local(world, STEPS, "ef21", **FAST)
    assert_ranks_identical(ef21)
    d, e = dense[0], ef21[0]
    assert e.train_loss <= d.train_loss + LOSS_MARGIN, (e.train_loss, d.train_loss)
    assert e.test_accuracy >= d.test_accuracy - ACCURACY_MARGIN, (e.test_accuracy, d.test_accuracy)
    assert e.stats["steps"] == STEPS and len(e.stats["history"]) == STEPS
    # One dense initialising step, then messages of k values + k int32 indices.
    assert e.stats["initialisations"] == 1
    assert e.stats["dense_bytes"] / e.stats["bytes_sent"] > 4.0


def test_global_estimate_is_the_mean_of_the_local_states():
    results = run_local(3, 60, "ef21")
    states = [r.ef_state["buckets"][0]["tensors"] for r in results]
    mean_local = sum(s["h_local"] for s in states) / len(states)
    assert torch.allclose(states[0]["h"], mean_local, rtol=1e-5, atol=1e-6)
    for s in states[1:]:  # the shared h is the same bits everywhere
        assert torch.equal(s["h"], states[0]["h"])


STATEFUL_METHODS = [
    ("ef21", {}),
    ("ef", {}),
    ("ef21-sgdm", {"momentum": 0.0, "lr": 0.1}),
    ("econtrol", {}),
    (EF21W([0.75, 0.25]), {}),
    (Clip21(tau=1.0), {}),
    (CLAG(zeta=1.0), {}),
    (AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5), {}),
    ("motef", {"momentum": 0.0, "lr": 0.1}),
    ("ef21", {"compressor": efcomm.Natural()}),
    ("ef21", {"compressor": efcomm.RandK(0.1)}),
    ("none", {"compressor": efcomm.QSGD(levels=3, block=256)}),
    ("ef21", {"compressor": efcomm.TopK(0.1, threshold=True)}),
]


@pytest.mark.parametrize("method,settings", STATEFUL_METHODS, ids=str)
def test_checkpoint_resume_continues_bit_for_bit(method, settings):
    """The random streams are keyed by each bucket's step count, and the threshold Top-k
    hint is saved: a resumed run is the uninterrupted one, bit for bit."""
    uninterrupted = LocalTraining(2, method, **settings)
    uninterrupted.train(40)
    first = LocalTraining(2, method, **settings)
    first.train(20)
    checkpoints = first.state_dicts()
    resumed = LocalTraining(2, method, **settings)
    resumed.load_state_dicts(checkpoints)
    resumed.train(20)
    a, b = uninterrupted.results(), resumed.results()
    assert_same_runs(a, b)
    assert b[0].stats["steps"] == 40
    # The resumed state was carried over, never restarted with a dense exchange.
    assert b[0].stats["initialisations"] == a[0].stats["initialisations"]


# method, its dense starts per bucket, its least compression factor, the loss and accuracy
# it must reach in STEPS steps, and its training settings. An untrained model has loss 2.31
# and accuracy 9%; exact averaging reaches 0.63 / 73% (world 2). When written: none 0.73 /
# 73%, ef 0.66 / 73%, econtrol 0.70 / 71%, ef21-w 0.66 / 73%, ef21-sgdm 0.64 / 73%, clip21
# 1.29 / 61%, lag 0.76 / 69% at 1.8x, clag 0.99 / 63% at 7.5x, adacgd 0.66 / 72% at 5.3x,
# motef 0.67 / 72%.
OTHER_METHODS = [
    ("none", 0, 4.0, 1.0, 0.65, FAST),
    ("ef", 0, 4.0, 1.0, 0.65, FAST),
    ("econtrol", 1, 4.0, 1.0, 0.65, FAST),
    (EF21W([0.75, 0.25]), 1, 4.0, 1.0, 0.65, FAST),
    ("ef21-sgdm", 1, 4.0, 1.0, 0.65, OWN_MOMENTUM),
    (Clip21(tau=1.0), 0, 0.99, 1.5, 0.55, FAST),  # dense messages: no compression, bounded sensitivity
    (LAG(zeta=1.0), 1, 1.5, 1.0, 0.65, FAST),  # dense messages, but only when the trigger fires
    (CLAG(zeta=1.0), 1, 6.0, 1.2, 0.6, FAST),
    (AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5), 1, 3.0, 1.0, 0.65, FAST),
    ("motef", 1, 4.0, 1.0, 0.65, OWN_MOMENTUM),
]


@pytest.mark.parametrize("method,dense_starts,compression,loss,accuracy,settings", OTHER_METHODS, ids=str)
def test_other_methods_train_and_keep_ranks_identical(method, dense_starts, compression, loss, accuracy, settings):
    results = run_local(2, STEPS, method, **settings)
    assert_ranks_identical(results)
    stats = results[0].stats
    assert stats["initialisations"] == dense_starts
    assert stats["dense_bytes"] / stats["bytes_sent"] > compression
    assert results[0].train_loss < loss and results[0].test_accuracy > accuracy


# method, compressor, its least compression factor, the loss and accuracy it must reach in
# STEPS steps, its settings. When written (in that order): none+RandK 0.72 / 72% at 4.0x,
# none+QSGD 0.68 / 73% at 7.7x, none+Natural 0.63 / 73%, none+Induced 0.78 / 69% at 6.7x,
# ef21+RandK 1.46 / 52% at 9.2x (lr 0.02: Rand-k keeps less energy than Top-k and diverges
# at 0.05), ef21+RandK window 1.67 / 40%, ef21+ScaledSign 1.14 / 61% at 23.5x, ef21+Int8
# 0.63 / 73% at 3.8x, ef21+FP8 stochastic 0.63 / 73%, ef21+Natural 0.63 / 73%, ef21+QSGD
# scaled 1.51 / 50% at 7.2x, ef+ScaledSign 0.87 / 67% at 30.3x, econtrol+RandK 1.69 / 44%,
# ef21-w+Natural 0.64 / 73%, clag+ScaledSign 1.37 / 57% at 33.2x, ef21-sgdm+Int8 0.62 / 74%.
RANDK = {"lr": 0.02}
COMPRESSOR_RUNS = [
    ("none", efcomm.RandK(0.25, unbiased=True), 3.9, 1.0, 0.65, FAST),
    ("none", efcomm.QSGD(levels=7, block=512), 7.5, 1.0, 0.65, FAST),
    ("none", efcomm.Natural(), 3.8, 1.0, 0.65, FAST),
    ("none", efcomm.Induced(efcomm.TopK(0.05), efcomm.RandK(0.05, unbiased=True)), 6.5, 1.0, 0.62, FAST),
    ("ef21", efcomm.RandK(0.1), 9.0, 2.0, 0.3, RANDK),
    ("ef21", efcomm.RandK(0.1, window=True), 9.0, 2.1, 0.25, RANDK),
    ("ef21", efcomm.ScaledSign(), 20.0, 1.4, 0.55, FAST),
    ("ef21", efcomm.Int8(), 3.7, 1.0, 0.65, FAST),
    ("ef21", efcomm.FP8(stochastic=True), 3.7, 1.0, 0.65, FAST),
    ("ef21", efcomm.Natural(), 3.7, 1.0, 0.65, FAST),
    ("ef21", efcomm.QSGD(levels=7, block=512).scaled(), 7.0, 2.0, 0.4, FAST),
    ("ef", efcomm.ScaledSign(), 25.0, 1.2, 0.6, FAST),
    ("econtrol", efcomm.RandK(0.1), 9.0, 2.1, 0.3, RANDK),
    (EF21W([0.75, 0.25]), efcomm.Natural(), 3.7, 1.0, 0.65, FAST),
    (CLAG(zeta=1.0), efcomm.ScaledSign(), 25.0, 1.7, 0.5, FAST),
    ("ef21-sgdm", efcomm.Int8(), 3.7, 1.0, 0.65, OWN_MOMENTUM),
]


@pytest.mark.parametrize("method,compressor,compression,loss,accuracy,settings", COMPRESSOR_RUNS, ids=str)
def test_every_compressor_trains_with_the_methods_that_accept_it(
    method, compressor, compression, loss, accuracy, settings
):
    results = run_local(2, STEPS, method, compressor=compressor, **settings)
    assert_ranks_identical(results)
    assert results[0].stats["dense_bytes"] / results[0].stats["bytes_sent"] > compression
    assert results[0].train_loss < loss and results[0].test_accuracy > accuracy


@pytest.mark.parametrize("method", ["ef21", "ef21-sgdm", "ef"])
def test_threshold_topk_trains_the_same_bits(method):
    """TopK(threshold=True) keeps a hint per bucket; the selection stays exact, so training
    is the exact Top-k run bit for bit."""
    settings = OWN_MOMENTUM if method == "ef21-sgdm" else FAST
    exact = run_local(2, 40, method, compressor=efcomm.TopK(0.1), **settings)
    hinted = run_local(2, 40, method, compressor=efcomm.TopK(0.1, threshold=True), **settings)
    for a, b in zip(exact, hinted):
        assert torch.equal(a.params, b.params)
    assert all(b["hints"]["topk_threshold"][0] > 0 for b in hinted[0].ef_state["buckets"])


@pytest.mark.parametrize(
    "method",
    [
        "none",
        "ef",
        EF21W([0.4, 0.3, 0.2, 0.1]),
        Clip21(tau=1.0),
        LAG(zeta=1.0),
        "ef21-sgdm",
        "econtrol",
        CLAG(zeta=1.0),
        AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5),
        "motef",
    ],
    ids=str,
)
def test_every_method_keeps_four_ranks_identical(method):
    """When written, after 60 steps: none (unbiased Rand-k) 0.87, ef 0.95, ef21-w 0.98,
    clip21 0.92, lag 1.08, ef21-sgdm 0.80, econtrol 0.93, clag 1.19, adacgd 1.01, motef 0.73."""
    settings = OWN_MOMENTUM if method in ("ef21-sgdm", "motef") else dict(FAST)
    if method == "none":  # unbiased, as it needs
        settings["compressor"] = efcomm.RandK(0.25, unbiased=True)
    results = run_local(4, 60, method, **settings)
    assert_ranks_identical(results)
    assert results[0].train_loss < 1.5  # untrained: 2.31


def two_buckets(training: LocalTraining) -> list:
    names = [name for name, _ in training.models[0].named_parameters()][::-1]
    return [names[:2], names[2:]]


@pytest.mark.parametrize(
    "method", ["ef21", LAG(zeta=1.0), CLAG(zeta=1.0), AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5)], ids=str
)
def test_resume_into_a_bucket_made_of_the_saved_buckets_runs_them_as_segments(method):
    """A resumed DDP model starts from its initial bucket layout (here one bucket holding
    everything) before it rebuilds: the step runs the saved layouts (two buckets) as segments
    of that bucket, so the resumed run is the uninterrupted one, bit for bit. The lazy
    methods exchange one choice per rank and segment, then each segment's messages."""
    options = {"min_compress_numel": 16}
    probe = LocalTraining(2, method, **options)
    split = two_buckets(probe)
    uninterrupted = LocalTraining(2, method, buckets=split, **options)
    uninterrupted.train(40)
    first = LocalTraining(2, method, buckets=split, **options)
    first.train(20)
    resumed = LocalTraining(2, method, **options)  # one bucket: the saved two, in order
    resumed.load_state_dicts(first.state_dicts())
    resumed.train(1)
    resumed.buckets = split  # DDP's rebuild
    resumed.train(19)
    a, b = uninterrupted.results(), resumed.results()
    assert len(a[0].ef_state["buckets"]) == 2
    assert_same_runs(a, b)
    assert b[0].stats["initialisations"] == a[0].stats["initialisations"] and b[0].stats["relayouts"] == 0


def test_a_new_layout_carries_the_state_over_by_parameter():
    """After a rebuild into other buckets, each new bucket's state is made of the old states'
    per-parameter slices: no dense restart."""
    training = LocalTraining(2, "ef21", min_compress_numel=16)
    training.train(3)
    training.buckets = two_buckets(training)
    training.train(3)
    stats = training.states[0].stats
    assert stats.initialisations == 1 and stats.relayouts == 2
    assert len(training.states[0].buckets) == 2  # the old layout was dropped
    assert_ranks_identical(training.results())


@pytest.mark.parametrize(
    "method,compressor",
    [("ef21", None), ("ef", None), ("ef21", efcomm.Natural(block=64)), ("ef21", efcomm.Int8(block=64))],
    ids=str,
)
def test_a_nonfinite_step_resets_the_state_on_every_rank(method, compressor):
    """Rank 1's gradients are inf at step 5 and every rank skips that optimizer step (as
    GradScaler does): the overflow is seen in the messages (Top-k values, quantizer block
    headers), every rank restarts the bucket, and training goes on with finite state."""
    training = LocalTraining(2, method, compressor=compressor)
    training.train(20, corrupt={5: 1})
    results = training.results()
    assert_ranks_identical(results)
    for state in training.states:
        assert state.stats.nonfinite_resets == 1
        assert all(torch.isfinite(t).all() for b in state.buckets.values() for t in b.tensors.values())
    assert torch.isfinite(results[0].params).all()


def test_bfloat16_model_keeps_float32_state():
    training = LocalTraining(2, "ef21", model_dtype=torch.bfloat16, state_dtype=torch.float32)
    training.train(30)
    results = training.results()
    assert_ranks_identical(results)
    dtypes = {t.dtype for s in training.states for b in s.buckets.values() for t in b.tensors.values()}
    assert dtypes == {torch.float32}
    assert results[0].train_loss < 2.31


def test_small_buckets_are_averaged_exactly():
    cluster = Cluster.create(2, "ef21", efcomm.TopK(0.1), min_compress_numel=1024)
    grads = [torch.full((100,), 1.0), torch.full((100,), 3.0)]
    outs = cluster.step_bucket(grads)
    assert outputs_identical(outs) and torch.equal(outs[0], torch.full((100,), 2.0))
    assert cluster.states[0].buckets == {} and cluster.states[0].stats.bytes_sent == 400


def test_a_step_yields_one_all_gather_of_a_fixed_size_message():
    state = efcomm.EFState("ef", efcomm.TopK(k=3), min_compress_numel=1)
    step = bucket_step(state, BucketInput(torch.randn(50), flat_signature(50, torch.float32), Worker(0, 2), 200, True))
    request = next(step)
    assert isinstance(request, AllGather) and request.final
    assert request.message.dtype == torch.uint8 and request.message.numel() == 3 * 4 + 3 * 4


def test_cluster_rejects_disagreeing_ranks():
    with pytest.raises(ValueError, match="configurations differ"):
        Cluster([efcomm.EFState("ef21", efcomm.TopK(0.1)), efcomm.EFState("ef21", efcomm.TopK(0.2))])
    with pytest.raises(ValueError, match="2 weights for a group of 3"):
        Cluster.create(3, EF21W([0.5, 0.5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_the_default_is_classic_ef_with_compact_top_1_percent_on_every_bucket_dtype(dtype):
    """What efcomm.register(ddp) and EFState() give (docs/convergence.md says why): classic EF,
    Top-1% in bf16 values and 16-bit offsets (a 16-bit bucket keeps its own dtype), about 1%
    of the dense bytes, the same bits on every rank, and no dense start."""
    state = efcomm.EFState()
    assert state.method == "ef" and state.compressor == efcomm.TopK(0.01, value_dtype=torch.bfloat16, index_bits=16)
    cluster = Cluster([efcomm.EFState() for _ in range(2)])
    numel, gen = 200_000, torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(numel, generator=gen).to(dtype) for _ in range(2)]
        outs = cluster.step_bucket([g.clone() for g in grads])
        assert torch.equal(outs[0], outs[1])
        assert 0 < outs[0].count_nonzero() <= 2 * math.ceil(0.01 * numel)
    stats = cluster.states[0].stats
    assert stats.initialisations == 0
    k = math.ceil(0.01 * numel)
    assert stats.bytes_sent == 3 * (4 * 4 + 4 * k)  # per step: 4 chunk counts, then k 2-byte values and offsets
    assert stats.bytes_sent / stats.dense_bytes < (0.0201 if dtype == torch.float32 else 0.0401)


def test_dense_steps_all_reduce_first_then_the_method_starts():
    cluster = Cluster([efcomm.EFState(dense_steps=2) for _ in range(2)])
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        grads = [torch.randn(4096, generator=gen) for _ in range(2)]
        mean = (grads[0] + grads[1]) / 2
        outs = cluster.step_bucket([g.clone() for g in grads])
        if step < 2:  # DDP's all-reduce: the exact mean, every entry
            assert torch.allclose(outs[0], mean) and outs[0].count_nonzero() == 4096
        else:  # EF with Top-1%: at most k entries per rank
            assert 0 < outs[0].count_nonzero() <= 2 * math.ceil(0.01 * 4096)
    history = [h["bytes_sent"] for h in cluster.states[0].stats.history]
    assert history[:2] == [4 * 4096] * 2 and history[2] == history[3] < 4096
    with pytest.raises(ValueError, match=r"dense_steps \(-1\) must be an int >= 0"):
        efcomm.EFState(dense_steps=-1)


def test_ef21_without_its_dense_start_begins_at_zero_and_compresses_from_the_first_step():
    from efcomm.methods import EF21, EF21SGDM

    for method in (EF21(dense_start=False), EF21SGDM(eta=0.5, dense_start=False)):
        cluster = Cluster([efcomm.EFState(method, efcomm.TopK(k=2), min_compress_numel=1) for _ in range(2)])
        grads = [torch.tensor([4.0, -1.0, 0.5, 3.0, 0.0]), torch.tensor([-2.0, 1.0, 5.0, 0.25, 0.0])]
        outs = cluster.step_bucket([g.clone() for g in grads], flat_signature(5, torch.float32))
        state = cluster.states[0]
        assert state.stats.initialisations == 0 and state.stats.bytes_sent < 5 * 4
        # h_i = C(g_i - 0) (EF21-SGDM: v_i starts at g_i): each rank's two largest entries; h = their mean
        local = [torch.where(g.abs() >= g.abs().topk(2).values[-1], g, torch.zeros_like(g)) for g in grads]
        assert torch.equal(state.buckets[next(iter(state.buckets))].tensors["h_local"], local[0])
        assert torch.equal(outs[0], (local[0] + local[1]) / 2) and torch.equal(outs[0], outs[1])
    assert repr(EF21(dense_start=False)) == "EF21(dense_start=False)" and repr(EF21()) == "EF21()"
    with pytest.raises(ValueError, match=r"dense_start \(1\) must be a bool"):
        EF21(dense_start=1)
