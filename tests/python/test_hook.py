"""The DDP hook in real multi-process gloo groups: what only DDP shows (bucket rebuilds,
no_sync, Join, find_unused_parameters, static_graph, gradient_as_bucket_view, the dtype of
DDP's buckets, configuration disagreement, resume across processes, real collectives for
every kind of exchange). The step logic itself (every method and compressor, resume,
non-finite steps, layouts) is tested in one process in test_engine.py.

Each launch of processes costs seconds, so three launches run every scenario
(ddp_workers.LAUNCHES, the session fixture ``ddp_launches``) and the tests read their results."""

import pickle

import pytest
import torch

import efcomm
from efcomm.harness import TrainConfig, run
from efcomm.methods import EF21W
from efcomm.state import per_rank


@pytest.fixture(scope="module")
def scenarios(ddp_launches):
    """The first two-rank launch: [rank 0's {scenario: result}, rank 1's]."""
    return ddp_launches["first"]


def test_harness_trains_ef21_over_ddp_with_ranks_identical():
    """The demo's harness end to end (DDP, gloo, EF21 + Top-10%)."""
    results = run(TrainConfig(method="ef21", ratio=0.1, steps=100), 2)
    assert torch.equal(results[0]["params"], results[1]["params"])
    stats = per_rank(results[0]["ef_state"])["stats"]
    assert stats["steps"] == 100 and stats["initialisations"] == 1
    assert stats["dense_bytes"] / stats["bytes_sent"] > 4.0
    assert results[0]["train_loss"] < 2.0  # untrained: 2.31


def test_gradient_as_bucket_view_gives_the_same_training(scenarios):
    """The state never aliases the bucket (it is the gradients' view with this option)."""
    for r in scenarios:
        assert torch.equal(r["gradient_as_bucket_view"]["plain"], r["gradient_as_bucket_view"]["view"])


def test_bucket_rebuild_carries_state_over_by_parameter(scenarios):
    results = [r["layout_change"] for r in scenarios]
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


def test_find_unused_parameters_and_static_graph(scenarios):
    for name in ("unused", "static"):
        runs = [r["unused_parameters_and_static_graph"][name] for r in scenarios]
        assert torch.equal(runs[0]["params"], runs[1]["params"]), name
        assert runs[0]["steps"] == 10 and runs[0]["losses"][-1] < runs[0]["losses"][0], name
    unused = scenarios[0]["unused_parameters_and_static_graph"]["unused"]
    assert unused["relayouts"] == 0  # DDP does not rebuild its buckets with unused parameters
    static = scenarios[0]["unused_parameters_and_static_graph"]["static"]
    assert static["relayouts"] >= 1  # rebuilt after the second iteration


def test_gradient_accumulation_with_no_sync(scenarios):
    runs = [r["no_sync"] for r in scenarios]
    assert [r["steps"] for r in runs] == [6, 6]  # the hook ran on synchronising passes only
    assert torch.equal(runs[0]["params"], runs[1]["params"])


def test_bfloat16_model_keeps_float32_state(scenarios):
    runs = [r["bfloat16_model_float32_state"] for r in scenarios]
    assert torch.equal(runs[0]["params"], runs[1]["params"])
    for r in runs:
        assert r["grad_dtype"] == torch.bfloat16 and r["state_dtypes"] == {torch.float32}
        assert all(torch.isfinite(torch.tensor(r["losses"])))


@pytest.mark.parametrize("compressor", ["topk", "int8"])
def test_nonfinite_step_is_skipped_everywhere_and_does_not_poison_the_state(scenarios, compressor):
    runs = [r["nonfinite"][compressor] for r in scenarios]
    for r in runs:
        assert r["skipped"] == [5], "every rank must see the overflow of rank 1"
        assert r["resets"] == r["buckets"] >= 1
        assert r["state_finite"] and torch.isfinite(r["params"]).all()
    assert torch.equal(runs[0]["params"], runs[1]["params"])


@pytest.mark.parametrize("config", ["ef21-topk", "ef21-int8", "ef21-randk", "clip21", "lag", "adacgd"])
def test_every_kind_of_exchange_over_real_collectives(scenarios, config):
    runs = [r["every_exchange"][config] for r in scenarios]
    assert torch.equal(runs[0]["params"], runs[1]["params"])
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in runs)
    if config.startswith("ef21"):
        assert runs[0]["dense"] / runs[0]["sent"] > 1.5


def test_ef21w_weights_from_estimated_smoothness(scenarios):
    """estimate_smoothness finds each rank's L_i (here known: 2 lambda_max(X_r^T X_r) / m,
    with rank r's data scaled by 1 + 2r), every rank gets the same list, and EF21-W trains
    with the weights it gives."""
    results = [r["smoothness"] for r in scenarios]
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


def test_resume_across_processes_continues_bit_for_bit(ddp_launches):
    """A new process group loads the per-rank checkpoints; DDP starts from its initial
    bucket layout again, and the run continues exactly like the uninterrupted one."""
    for a, b in zip(ddp_launches["first"], ddp_launches["second"]):
        a, b = a["resume_save"]["uninterrupted"], b["resume_load"]["resumed"]
        a["state"], b["state"] = per_rank(a["state"]), per_rank(b["state"])
        assert torch.equal(a["params"], b["params"])
        assert len(a["state"]["buckets"]) == len(b["state"]["buckets"]) >= 2
        for x, y in zip(a["state"]["buckets"], b["state"]["buckets"]):
            assert x["signature"] == y["signature"]
            for name in x["tensors"]:
                assert torch.equal(x["tensors"][name], y["tensors"][name]), name
        assert b["state"]["stats"]["initialisations"] == a["state"]["stats"]["initialisations"]


def test_ranks_with_different_configuration_fail_with_a_clear_error(scenarios):
    for r in scenarios:
        error = r["mismatch"]["error"]
        assert error is not None and "ranks disagree on the hook configuration" in error


def test_uneven_inputs_under_join_do_not_deadlock(ddp_launches):
    results = [r["join"] for r in ddp_launches["three"]]
    assert [r["steps"] for r in results] == [16, 16, 16]  # every rank ran the hook every step
    # The shared estimate h (the hook's own state, which Join does not broadcast) agrees.
    for r in results[1:]:
        assert len(r["h"]) == len(results[0]["h"]) >= 1
        assert all(torch.equal(a, b) for a, b in zip(r["h"], results[0]["h"]))


def test_a_killed_rank_makes_the_others_fail_within_seconds(ddp_launches):
    for r in ddp_launches["three"][:2]:
        result = r["killed_rank"]
        assert result["error"] is not None, "the survivors must not hang"
        assert result["seconds"] < 10.0


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
    with pytest.raises(TypeError, match=r"side_stream \('yes'\) must be a bool"):
        efcomm.EFState(side_stream="yes")
    assert efcomm.EFState(side_stream=True).stream_for(torch.device("cpu")) is None  # CPU buckets: no stream

    state = efcomm.EFState("ef21", efcomm.TopK(0.05), side_stream=True)
    state._streams = {"cuda:0": object()}  # stands in for a side stream, which cannot be pickled
    state.process_group = object()  # stands in for a live group, which cannot be pickled
    state.param_names = {id(state): "w"}
    state._config_checked = True
    clone = pickle.loads(pickle.dumps(state))
    assert clone.process_group is None and clone.config() == state.config()
    assert clone.param_names == {} and not clone._config_checked  # both belong to one process
    assert clone._streams == {} and clone.side_stream

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
