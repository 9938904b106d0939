"""The DDP hook over gloo, in spawned multi-process groups: every method, every compressor."""
import pickle
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from ddp_workers import (
    join_worker,
    layout_change_worker,
    mismatch_worker,
    no_sync_worker,
    nonfinite_worker,
    smoothness_worker,
    spawn,
    state_dtype_worker,
)

import efcomm
from efcomm.demo import TrainConfig, run
from efcomm.methods import CLAG, EF21W, LAG, AdaCGD, Clip21

# Settings where EF21 with Top-10% is expected to train as well as dense all-reduce.
BASE = TrainConfig(steps=300, ratio=0.1, lr=0.01, momentum=0.9)
# EF21 may trail dense all-reduce by this much after BASE.steps steps.
LOSS_MARGIN = 0.15
ACCURACY_MARGIN = 0.05


def assert_same_runs(runs_a, runs_b):
    """Bit-for-bit the same parameters and error-feedback state on every rank."""
    for a, b in zip(runs_a, runs_b):
        assert torch.equal(a["params"], b["params"])
        buckets_a = {tuple(map(str, x["signature"])): x["tensors"] for x in a["ef_state"]["buckets"]}
        buckets_b = {tuple(map(str, x["signature"])): x["tensors"] for x in b["ef_state"]["buckets"]}
        assert buckets_a.keys() == buckets_b.keys() and len(buckets_a) >= 1
        for signature, tensors in buckets_a.items():
            assert tensors.keys() == buckets_b[signature].keys()
            for name, tensor in tensors.items():
                assert torch.equal(tensor, buckets_b[signature][name]), name


def assert_ranks_identical(results):
    for r in results[1:]:
        assert torch.equal(r["params"], results[0]["params"]), f"rank {r['rank']} drifted from rank 0"


@pytest.mark.parametrize("world_size", [2, 4])
def test_ef21_trains_like_dense_and_ranks_stay_identical(world_size):
    dense = run(replace(BASE, method="dense"), world_size)
    ef21 = run(replace(BASE, method="ef21"), world_size)
    assert_ranks_identical(dense)
    assert_ranks_identical(ef21)
    d, e = dense[0], ef21[0]
    assert e["train_loss"] <= d["train_loss"] + LOSS_MARGIN, (e["train_loss"], d["train_loss"])
    assert e["test_accuracy"] >= d["test_accuracy"] - ACCURACY_MARGIN, (e["test_accuracy"], d["test_accuracy"])
    stats = e["ef_state"]["stats"]
    assert stats["steps"] == BASE.steps and len(stats["history"]) == BASE.steps
    # One dense initialising step, then messages of k values + k int32 indices.
    assert stats["initialisations"] == 1
    assert stats["dense_bytes"] / stats["bytes_sent"] > 4.0


def test_global_estimate_is_mean_of_local_states():
    results = run(replace(BASE, method="ef21", steps=60), 3)
    states = [r["ef_state"]["buckets"] for r in results]
    assert len(states[0]) >= 1
    for index, bucket in enumerate(states[0]):
        mean_local = sum(s[index]["tensors"]["h_local"] for s in states) / len(states)
        assert torch.allclose(bucket["tensors"]["h"], mean_local, rtol=1e-5, atol=1e-6)
        for s in states[1:]:  # the shared h is the same bits everywhere
            assert torch.equal(s[index]["tensors"]["h"], bucket["tensors"]["h"])


STATEFUL_METHODS = [
    "ef21", "ef", "ef21-sgdm", "econtrol", EF21W([0.75, 0.25]), Clip21(tau=1.0), CLAG(zeta=1.0),
    AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5), "motef",
]


@pytest.mark.parametrize("method", STATEFUL_METHODS, ids=str)
def test_checkpoint_resume_continues_bit_for_bit(tmp_path, method):
    cfg = replace(BASE, method=method, steps=60)
    uninterrupted = run(cfg, 2)
    run(replace(cfg, steps=30, checkpoint_out=str(tmp_path / "ckpt")), 2)
    resumed = run(replace(cfg, steps=30, checkpoint_in=str(tmp_path / "ckpt")), 2)
    assert_same_runs(uninterrupted, resumed)
    assert resumed[0]["ef_state"]["stats"]["steps"] == 60
    # The resumed state was carried over, never restarted with a dense exchange.
    assert resumed[0]["ef_state"]["stats"]["initialisations"] == uninterrupted[0]["ef_state"]["stats"]["initialisations"]


# method, its dense starts per bucket, its least compression factor, and training settings
# where it works.
OTHER_METHODS = [
    ("none", 0, 4.0, {}),
    ("ef", 0, 4.0, {}),
    ("econtrol", 1, 4.0, {}),
    (EF21W([0.75, 0.25]), 1, 4.0, {}),
    ("ef21-sgdm", 1, 4.0, {"momentum": 0.0, "lr": 0.1}),  # the method's momentum replaces SGD's
    (Clip21(tau=1.0), 0, 0.99, {}),  # dense messages: no compression, bounded sensitivity
    (LAG(zeta=1.0), 1, 1.5, {}),  # dense messages, but only when the trigger fires
    (CLAG(zeta=1.0), 1, 6.0, {}),
    (AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5), 1, 3.0, {}),
    ("motef", 1, 4.0, {"momentum": 0.0, "lr": 0.1}),  # its momentum replaces SGD's
]


@pytest.mark.parametrize("method,dense_starts,compression,settings", OTHER_METHODS, ids=lambda v: str(v))
def test_other_methods_train_and_keep_ranks_identical(method, dense_starts, compression, settings):
    results = run(replace(BASE, method=method, **settings), 2)
    assert_ranks_identical(results)
    stats = results[0]["ef_state"]["stats"]
    assert stats["initialisations"] == dense_starts
    assert stats["dense_bytes"] / stats["bytes_sent"] > compression
    # An untrained model has loss 2.31 and accuracy 9%. When this test was written, after
    # BASE.steps steps: none 0.94 / 70%, ef 0.66 / 76%, econtrol 0.66 / 77%, ef21-w 0.68 / 76%,
    # ef21-sgdm 0.64 / 77%, clip21 0.65 / 77%, lag 0.70 / 74% at 2.0x, clag 0.73 / 74% at
    # 10.0x, adacgd 0.68 / 76% at 5.7x, motef 0.63 / 76% at 4.9x (dense all-reduce: 0.5 / 78%).
    assert results[0]["train_loss"] < 1.2 and results[0]["test_accuracy"] > 0.6


# method, compressor, its least compression factor, the loss and accuracy it must reach in
# BASE.steps steps. An untrained model has loss 2.31 and accuracy 9%; when this test was
# written (in that order): none+RandK 0.66 / 76% at 4.0x, none+QSGD 0.65 / 77% at 7.7x,
# none+Natural 0.65 / 77% at 3.9x, none+Induced 0.66 / 75% at 6.7x, ef21+RandK 1.41 / 51% at
# 9.7x (Rand-k keeps less energy than Top-k: slower), ef21+RandK window 1.78 / 39%,
# ef21+ScaledSign 0.66 / 76% at 27.6x, ef21+Int8 0.65 / 77% at 3.9x, ef21+FP8 stochastic
# 0.65 / 77%, ef21+Natural 0.65 / 76%, ef21+QSGD scaled 0.93 / 64% at 7.5x, ef+ScaledSign
# 0.66 / 77% at 30.3x, econtrol+RandK 1.23 / 55%, ef21-sgdm+Int8 0.64 / 77%, ef21-w+Natural
# 0.65 / 76%, clag+ScaledSign 0.79 / 70% at 74.8x.
COMPRESSOR_RUNS = [
    ("none", efcomm.RandK(0.25, unbiased=True), 3.9, 1.2, 0.6),
    ("none", efcomm.QSGD(levels=7, block=512), 7.5, 1.2, 0.6),
    ("none", efcomm.Natural(), 3.8, 1.2, 0.6),
    ("none", efcomm.Induced(efcomm.TopK(0.05), efcomm.RandK(0.05, unbiased=True)), 6.5, 1.2, 0.6),
    ("ef21", efcomm.RandK(0.1), 9.5, 2.0, 0.3),
    ("ef21", efcomm.RandK(0.1, window=True), 9.5, 2.1, 0.25),
    ("ef21", efcomm.ScaledSign(), 25.0, 1.2, 0.6),
    ("ef21", efcomm.Int8(), 3.8, 1.2, 0.6),
    ("ef21", efcomm.FP8(stochastic=True), 3.8, 1.2, 0.6),
    ("ef21", efcomm.Natural(), 3.8, 1.2, 0.6),
    ("ef21", efcomm.QSGD(levels=7, block=512).scaled(), 7.0, 1.2, 0.55),
    ("ef", efcomm.ScaledSign(), 25.0, 1.2, 0.6),
    ("econtrol", efcomm.RandK(0.1), 9.5, 2.0, 0.3),
    (EF21W([0.75, 0.25]), efcomm.Natural(), 3.8, 1.2, 0.6),
    (CLAG(zeta=1.0), efcomm.ScaledSign(), 40.0, 1.2, 0.6),
]


@pytest.mark.parametrize("method,compressor,compression,loss,accuracy", COMPRESSOR_RUNS, ids=str)
def test_every_compressor_trains_with_the_methods_that_accept_it(method, compressor, compression, loss, accuracy):
    results = run(replace(BASE, method=method, compressor=compressor), 2)
    assert_ranks_identical(results)
    stats = results[0]["ef_state"]["stats"]
    assert stats["dense_bytes"] / stats["bytes_sent"] > compression
    assert results[0]["train_loss"] < loss and results[0]["test_accuracy"] > accuracy


def test_ef21_sgdm_with_a_quantizer_trains():
    results = run(replace(BASE, method="ef21-sgdm", compressor=efcomm.Int8(), momentum=0.0, lr=0.1), 2)
    assert_ranks_identical(results)
    assert results[0]["train_loss"] < 1.2 and results[0]["test_accuracy"] > 0.6


@pytest.mark.parametrize(
    "method,compressor",
    [("ef21", efcomm.Natural()), ("ef21", efcomm.RandK(0.1)), ("none", efcomm.QSGD(levels=3, block=256))],
    ids=str,
)
def test_resume_with_random_compressors_continues_bit_for_bit(tmp_path, method, compressor):
    """The random streams are keyed by each bucket's step count, which the checkpoint keeps."""
    cfg = replace(BASE, method=method, compressor=compressor, steps=40)
    uninterrupted = run(cfg, 2)
    run(replace(cfg, steps=20, checkpoint_out=str(tmp_path / "ckpt")), 2)
    resumed = run(replace(cfg, steps=20, checkpoint_in=str(tmp_path / "ckpt")), 2)
    assert_same_runs(uninterrupted, resumed)


@pytest.mark.parametrize("method", ["ef21", "ef21-sgdm", "ef"], ids=str)
def test_threshold_topk_trains_the_same_bits_and_resumes_its_hint(tmp_path, method):
    """TopK(threshold=True) keeps a hint per bucket (saved with the state); the selection
    stays exact, so training is the exact Top-k run bit for bit."""
    settings = {"momentum": 0.0, "lr": 0.1} if method == "ef21-sgdm" else {}
    cfg = replace(BASE, method=method, steps=40, **settings)
    exact = run(replace(cfg, compressor=efcomm.TopK(0.1)), 2)
    hinted_cfg = replace(cfg, compressor=efcomm.TopK(0.1, threshold=True))
    hinted = run(hinted_cfg, 2)
    for a, b in zip(exact, hinted):
        assert torch.equal(a["params"], b["params"])
    buckets = hinted[0]["ef_state"]["buckets"]
    assert buckets and all(b["hints"]["topk_threshold"][0] > 0 for b in buckets)
    run(replace(hinted_cfg, steps=20, checkpoint_out=str(tmp_path / "ckpt")), 2)
    resumed = run(replace(hinted_cfg, steps=20, checkpoint_in=str(tmp_path / "ckpt")), 2)
    assert_same_runs(hinted, resumed)
    for a, b in zip(hinted[0]["ef_state"]["buckets"], resumed[0]["ef_state"]["buckets"]):
        assert torch.equal(a["hints"]["topk_threshold"], b["hints"]["topk_threshold"])


def test_gradient_as_bucket_view_gives_the_same_training():
    cfg = replace(BASE, method="ef21", steps=40)
    plain = run(cfg, 2)
    view = run(replace(cfg, gradient_as_bucket_view=True), 2)
    for a, b in zip(plain, view):
        assert torch.equal(a["params"], b["params"])


def test_bucket_rebuild_carries_state_over_by_parameter():
    results = spawn(layout_change_worker, 2)
    assert torch.equal(results[0]["params"], results[1]["params"])
    first, second, *rest = results[0]["signatures"]
    assert first != second, "the test model should make DDP change its bucket layout"
    assert all(s == second for s in rest)
    # Dense initialisation once per bucket at step 1; the rebuilt buckets are re-laid out
    # from the old state instead of starting over.
    assert results[0]["initialisations"] == len(first)
    assert results[0]["relayouts"] >= 1
    assert results[0]["initialisations"] + results[0]["relayouts"] == len(first) + sum(
        1 for sig in second if sig not in first
    )


def test_ranks_with_different_configuration_fail_with_a_clear_error():
    results = spawn(mismatch_worker, 2)
    for r in results:
        assert r["error"] is not None and "ranks disagree on the hook configuration" in r["error"]


def test_uneven_inputs_under_join_do_not_deadlock():
    results = spawn(join_worker, 3)
    assert [r["steps"] for r in results] == [16, 16, 16]  # every rank ran the hook every step
    # The shared estimate h (the hook's own state, which Join does not broadcast) agrees.
    for r in results[1:]:
        assert len(r["h"]) == len(results[0]["h"]) >= 1
        assert all(torch.equal(a, b) for a, b in zip(r["h"], results[0]["h"]))


def test_bfloat16_model_keeps_float32_state():
    results = spawn(state_dtype_worker, 2)
    assert torch.equal(results[0]["params"], results[1]["params"])
    for r in results:
        assert r["grad_dtype"] == torch.bfloat16 and r["state_dtypes"] == {torch.float32}
        assert all(torch.isfinite(torch.tensor(r["losses"])))


def test_gradient_accumulation_with_no_sync():
    results = spawn(no_sync_worker, 2)
    assert [r["steps"] for r in results] == [6, 6]  # the hook ran on synchronising passes only
    assert torch.equal(results[0]["params"], results[1]["params"])


@pytest.mark.parametrize("method", ["ef21", LAG(zeta=1.0), CLAG(zeta=1.0), AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5)], ids=str)
def test_multi_bucket_resume_continues_bit_for_bit(tmp_path, method):
    """A resumed DDP model starts from its initial bucket layout (here one bucket holding
    everything) before it rebuilds: the hook runs the saved layouts (two buckets) as
    segments of that bucket, so the resumed run is the uninterrupted one, bit for bit. The
    lazy methods exchange one choice per rank and segment, then each segment's messages."""
    cfg = replace(BASE, method=method, steps=60, bucket_cap_mb=0.02, min_compress_numel=16)
    uninterrupted = run(cfg, 2)
    run(replace(cfg, steps=30, checkpoint_out=str(tmp_path / "ckpt")), 2)
    resumed = run(replace(cfg, steps=30, checkpoint_in=str(tmp_path / "ckpt")), 2)
    assert len(uninterrupted[0]["ef_state"]["buckets"]) == 2
    assert_same_runs(uninterrupted, resumed)
    assert resumed[0]["ef_state"]["stats"]["initialisations"] == uninterrupted[0]["ef_state"]["stats"]["initialisations"]


@pytest.mark.parametrize(
    "method,compressor",
    [("ef21", None), ("ef", None), ("ef21", efcomm.Natural(block=64)), ("ef21", efcomm.Int8(block=64))],
    ids=str,
)
def test_nonfinite_step_is_skipped_everywhere_and_does_not_poison_the_state(method, compressor):
    """The overflow is seen in the messages (Top-k values, quantizer block headers) without
    a pass over the state."""
    results = spawn(nonfinite_worker, 2, method, compressor)
    for r in results:
        assert r["skipped"] == [5], "every rank must see the overflow of rank 1"
        assert r["resets"] == r["buckets"] >= 1
        assert r["state_finite"] and torch.isfinite(r["params"]).all()
    assert torch.equal(results[0]["params"], results[1]["params"])


def test_state_validation_and_pickling():
    with pytest.raises(ValueError, match=r"method \('ef42'\)"):
        efcomm.EFState("ef42")
    with pytest.raises(ValueError, match=r"method 'none' needs an unbiased compressor"):
        efcomm.EFState("none", efcomm.TopK(0.1))
    assert efcomm.EFState("none", efcomm.TopK(0.1), allow_biased=True).method == "none"
    with pytest.raises(ValueError, match=r"k \(0\)"):
        efcomm.TopK(k=0)
    with pytest.raises(ValueError, match=r"'ef21-w' needs weights"):
        efcomm.EFState("ef21-w")
    with pytest.raises(ValueError, match=r"weights .* must sum to 1"):
        EF21W([0.5, 0.6])
    with pytest.raises(ValueError, match=r"eta \(0\) must be in \(0, 1\]"):
        efcomm.methods.EF21SGDM(eta=0)
    with pytest.raises(ValueError, match=r"3 weights for a group of 2"):
        EF21W([0.2, 0.3, 0.5]).check_world(2)
    with pytest.raises(TypeError, match=r"compressor \('topk'\)"):
        efcomm.EFState("ef21", "topk")
    with pytest.raises(ValueError, match=r"ratio \(0\)"):
        efcomm.TopK(0)
    with pytest.raises(ValueError, match=r"ratio \(1.5\)"):
        efcomm.TopK(1.5)
    with pytest.raises(ValueError, match=r"min_compress_numel \(0\)"):
        efcomm.EFState(min_compress_numel=0)
    with pytest.raises(ValueError, match=r"state_dtype \(torch.float64\)"):
        efcomm.EFState(state_dtype=torch.float64)
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        efcomm.register(torch.nn.Linear(2, 2))

    state = efcomm.EFState("ef21", efcomm.TopK(0.05))
    state.process_group = object()  # stands in for a live group, which cannot be pickled
    state.param_names = {id(state): "w"}
    state._config_checked = True
    clone = pickle.loads(pickle.dumps(state))
    assert clone.process_group is None and clone.config() == state.config()
    assert clone.param_names == {} and not clone._config_checked  # both belong to one process

    other = efcomm.EFState("ef21", efcomm.TopK(0.5))
    with pytest.raises(ValueError, match="checkpoint configuration"):
        other.load_state_dict(state.state_dict())


def test_topk_k_for_bucket_sizes():
    assert efcomm.TopK(0.01).k_for(1) == 1
    assert efcomm.TopK(0.01).k_for(1000) == 10
    assert efcomm.TopK(0.01).k_for(1001) == 11
    assert efcomm.TopK(1.0).k_for(7) == 7
    assert efcomm.TopK(k=5).k_for(3) == 3 and efcomm.TopK(k=5).k_for(100) == 5
    assert efcomm.TopK(k=1).alpha(3) == pytest.approx(1 / 3)


def test_ef21w_weights_from_estimated_smoothness():
    """estimate_smoothness finds each rank's L_i (here known: 2 lambda_max(X_r^T X_r) / m,
    with rank r's data scaled by 1 + 2r), every rank gets the same list, and EF21-W trains
    with the weights it gives."""
    results = spawn(smoothness_worker, 2)
    for r in results:
        assert r["estimates"] == results[0]["estimates"] and r["weights"] == results[0]["weights"]
        assert torch.equal(r["params"], results[0]["params"])
    for rank, r in enumerate(results):
        # Power iteration approaches the top eigenvalue from below; when written, 100
        # iterations were within 0.8% of it.
        assert 0.98 * r["exact"] <= r["estimates"][rank] <= r["exact"] * (1 + 1e-6)
    weights = results[0]["weights"]
    assert 8.0 < weights[1] / weights[0] < 10.0  # data scaled by 3: L scaled by 9 (up to the draws)
    assert results[0]["losses"][-1] < 0.5 * results[0]["losses"][0]


@pytest.mark.parametrize(
    "method",
    [
        "none", "ef", EF21W([0.4, 0.3, 0.2, 0.1]), Clip21(tau=1.0), LAG(zeta=1.0), "ef21-sgdm", "econtrol",
        CLAG(zeta=1.0), AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5), "motef",
    ],
    ids=str,
)
def test_every_method_keeps_four_ranks_identical(method):
    """World size 4 for every method (ef21: test_ef21_trains_like_dense_...)."""
    settings = {"momentum": 0.0, "lr": 0.1} if method in ("ef21-sgdm", "motef") else {}
    if method == "none":  # unbiased, as it needs (biased Top-k ended at 1.54 here)
        settings = {"compressor": efcomm.RandK(0.25, unbiased=True)}
    results = run(replace(BASE, method=method, steps=200, **settings), 4)
    assert_ranks_identical(results)
    assert results[0]["train_loss"] < 1.5  # untrained: 2.31
