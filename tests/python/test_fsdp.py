"""efcomm under FSDP2 (efcomm.register_fsdp): the exchange between replicas of a sharded
model, on gloo ranks laid out as 2 replicas x 2 shards and 2 replicas x 4 shards.

Three launches of processes run every scenario (fsdp_workers.LAUNCHES, the session fixture
``fsdp_launches``, each launch when a test first reads it); the tests read their results."""

import math
import tempfile

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

import efcomm
from efcomm.engine import BucketInput, bucket_step, row_signature, scatter_step
from efcomm.methods import Worker
from efcomm.transport import InProcessTransport
from efcomm import wire_model  # noqa: F401  (efcomm.wire_model below)
from efcomm.wire_model import hsdp_inter_bytes
from conftest import requires_cuda
from fsdp_reference import (
    assemble,
    compact_topk_nbytes,
    expected_hook_outputs,
    shard_numel,
    sparse_topk_nbytes,
    unit_shapes,
)
from fsdp_workers import COMPACT_TOP1, TinyTransformer, devices_worker, spawn, sync_worker

MESHES = {"2x2-hooks": (2, 2), "2x2": (2, 2), "2x4": (2, 4)}
UNITS = unit_shapes(TinyTransformer())  # {unit: parameter shapes}, read from the model itself


def _replica_pairs(launch: str):
    """(rank, rank of the same shard on the next replica) for every rank of the first replica."""
    replicas, shards = MESHES[launch]
    return [(r, r + shards * k) for r in range(shards) for k in range(1, replicas)]


@pytest.mark.parametrize("launch", ["2x2", "2x4"])
def test_ef21_compact_top1_replicas_hold_bitwise_identical_shards(fsdp_launches, launch):
    ranks = fsdp_launches[launch]
    for a, b in _replica_pairs(launch):
        assert torch.equal(ranks[a]["ef21_compact_top1"]["shards"], ranks[b]["ef21_compact_top1"]["shards"])
    assert not torch.equal(ranks[0]["ef21_compact_top1"]["shards"], ranks[1]["ef21_compact_top1"]["shards"])
    assert all(r["ef21_compact_top1"]["unpickled_buckets"] == 3 for r in ranks)  # the state pickles


@pytest.mark.parametrize("launch", ["2x2", "2x4"])
def test_ef21_compact_top1_trains_like_native_hsdp(fsdp_launches, launch):
    for r in fsdp_launches[launch]:
        run = r["ef21_compact_top1"]
        first, last = run["losses"][0], sum(run["losses"][-5:]) / 5
        assert last < first - 1.0  # untrained: ln(64) = 4.16
        if launch == "2x2":
            assert last < sum(run["native_losses"][-5:]) / 5 + 0.3


def _shard_numels(shards: int) -> dict:
    """{unit: entries of one rank's shard}, by hand from the parameter shapes."""
    return {unit: shard_numel(shapes, shards) for unit, shapes in UNITS.items()}


def _calls_by_shard(ranks: list, launch: str, pick) -> dict:
    """{shard: [every replica's recorded hook calls, replica order]} from a run's results."""
    replicas, shards = MESHES[launch]
    return {s: [pick(ranks[q * shards + s])["calls"] for q in range(replicas)] for s in range(shards)}


def _check_hook_outputs(ranks: list, launch: str, pick, **reference) -> int:
    """Every recorded call of every rank left what fsdp_reference recomputes from what the
    replicas received, bit for bit; returns the number of calls checked."""
    checked = 0
    for shard, calls_by_replica in _calls_by_shard(ranks, launch, pick).items():
        expected = expected_hook_outputs(calls_by_replica, **reference)
        for calls in calls_by_replica:
            for unit, outs in expected.items():
                left = [c["out"] for c in calls if c["unit"] == unit]
                assert len(left) == len(outs)
                for i, (a, b) in enumerate(zip(left, outs)):
                    assert torch.equal(a, b), (shard, unit, i, (a - b).abs().max())
                    checked += 1
    return checked


@pytest.mark.parametrize("launch", ["2x2", "2x4"])
def test_bytes_between_replicas_by_hand_and_a_like_for_like_compression_factor(fsdp_launches, launch):
    """EF21 + compact Top-1%: the dense start, then every step each unit's shard message once,
    computed by hand from the parameter shapes (4 bytes of count per 65536 entries, k bf16
    values and k 16-bit offsets, each padded to 4 bytes). ``bytes_sent`` is that exchange between
    replicas alone and ``dense_bytes`` native HSDP's all-reduce of the same shards, so
    ``compression_factor`` compares the two; FSDP's reduce-scatter (this rank's input, every
    shard of every unit, each step) is ``intra_node_bytes``, in neither."""
    replicas, shards = MESHES[launch]
    numels = _shard_numels(shards)
    message = sum(compact_topk_nbytes(n, COMPACT_TOP1["ratio"]) for n in numels.values())
    dense = 4 * sum(numels.values())
    assert hsdp_inter_bytes(list(numels.values()), efcomm.TopK(**COMPACT_TOP1), torch.float32, 256) == message
    for r in fsdp_launches[launch]:
        run = r["ef21_compact_top1"]
        steps = len(run["losses"])
        assert sorted(n for n, _ in run["units"]) == sorted(numels.values())
        per_step = [b - a for a, b in zip(run["inter_bytes"], run["inter_bytes"][1:])]
        assert run["inter_bytes"][0] == dense  # the dense start
        assert per_step == [message] * (steps - 1)
        sent = dense + (steps - 1) * message
        assert run["stats"]["bytes_sent"] == sent
        assert run["stats"]["dense_bytes"] == dense * steps
        assert run["compression_factor"] == dense * steps / sent
        assert run["compression_factor"] >= 20
        assert run["intra_node_bytes"] == dense * shards * steps
        assert [h["bytes_sent"] for h in run["history"]] == [dense] + [message] * (steps - 1)


def _default_schedule(name: str, step: int) -> list:
    """The units that get a gradient at a step of scenario_default_steps."""
    if name == "frozen":
        return ["<root>", "blocks.1"]
    return ["<root>", "blocks.0"] + (["blocks.1"] if step % 2 == 0 else [])


@pytest.mark.parametrize("name", ["frozen", "branch"])
def test_a_step_ends_with_the_backward_pass_when_a_unit_has_no_gradient(fsdp_launches, name):
    """register_fsdp's defaults with dense_steps=2, 6 steps: a frozen first block (FSDP never
    calls its hook), or a second block that runs at even steps only. Every backward pass is a
    step (before: a frozen unit kept the first step from ever ending, so dense_steps never did;
    a unit that skipped a step merged two steps into one). Each step sends what its units need,
    by hand: the plain mean of each shard for two steps, then each shard's compact Top-1%
    message; and each hook leaves what the reference (EF, bf16 values) computes from what the
    replicas received."""
    numels = _shard_numels(2)
    ranks = fsdp_launches["2x2-hooks"]
    for r in ranks:
        run = r["default_steps"][name]
        assert run["stats"]["steps"] == 6 and len(run["stats"]["history"]) == 6
        expected = [
            sum(
                4 * numels[u] if step < 2 else compact_topk_nbytes(numels[u], 0.01)
                for u in _default_schedule(name, step)
            )
            for step in range(6)
        ]
        assert [h["bytes_sent"] for h in run["stats"]["history"]] == expected
        assert [h["dense_bytes"] for h in run["stats"]["history"]] == [
            sum(4 * numels[u] for u in _default_schedule(name, step)) for step in range(6)
        ]
        assert sorted((c["step"], c["unit"]) for c in run["calls"]) == [
            (step, u) for step in range(6) for u in _default_schedule(name, step)
        ]
        assert run["layouts"] == (2 if name == "frozen" else 3)  # a skipped unit keeps its state
        assert run["stats"]["initialisations"] == 0  # EF starts from e = 0
    checked = _check_hook_outputs(
        ranks, "2x2-hooks", lambda r: r["default_steps"][name], ratio=0.01, value_dtype=torch.bfloat16, dense_steps=2
    )
    assert checked == 2 * 2 * sum(len(_default_schedule(name, step)) for step in range(6))
    for a, b in _replica_pairs("2x2"):
        assert torch.equal(ranks[a]["default_steps"][name]["shards"], ranks[b]["default_steps"][name]["shards"])


def test_dense_configurations_equal_native_hsdp(fsdp_launches):
    for r in fsdp_launches["2x2"]:
        run = r["dense_equals_native_hsdp"]
        torch.testing.assert_close(run["ef21_identity"], run["native"], rtol=0, atol=1e-6)
        torch.testing.assert_close(run["mean"], run["native"], rtol=0, atol=1e-6)
        assert run["stats"]["initialisations"] == 0  # none: plain averaging, no state


@pytest.mark.parametrize("gate", ["no_sync", "no_all_reduce"])
def test_gradient_accumulation_equals_native_hsdp(fsdp_launches, gate):
    """set_requires_gradient_sync(False) and set_requires_all_reduce(False) on the first of
    two micro-batches, as native HSDP does them (plain averaging through efcomm: native HSDP's
    gradient)."""
    for r in fsdp_launches["2x2-hooks"]:
        run = r["accumulation"][gate]
        torch.testing.assert_close(run["efcomm"], run["native"], rtol=0, atol=1e-6)
        assert run["steps"] == 4  # one exchange per optimizer step


@pytest.mark.parametrize("gate", ["no_sync", "no_all_reduce"])
def test_gradient_accumulation_with_error_feedback_matches_the_reference(fsdp_launches, gate):
    """The same two gates with EF + Top-5% (compressing): one exchange per optimizer step of
    the accumulated shard (the kept one added: set_requires_all_reduce(False)), bit for bit
    the reference's; FSDP's reduce-scatter bytes by hand: once per step under no_sync, once per
    micro-batch under no_all_reduce (the kept micro-batch's counted too)."""
    numels = _shard_numels(2)
    ranks = fsdp_launches["2x2-hooks"]
    reduce_scatters = 1 if gate == "no_sync" else 2
    for r in ranks:
        run = r["accumulation"][gate]["ef"]
        assert run["steps"] == 4
        assert run["intra_node_bytes"] == 4 * reduce_scatters * 2 * 4 * sum(numels.values())
        assert run["stats"]["bytes_sent"] == 4 * sum(sparse_topk_nbytes(n, 0.05) for n in numels.values())
        assert sum(not c["exchanged"] for c in run["calls"]) == (0 if gate == "no_sync" else 4 * 3)
    assert _check_hook_outputs(ranks, "2x2-hooks", lambda r: r["accumulation"][gate]["ef"], ratio=0.05) == (
        2 * 2 * 4 * 3 * reduce_scatters
    )


def test_bf16_reduce_dtype_with_float32_state(fsdp_launches):
    ranks = fsdp_launches["2x2"]
    for a, b in _replica_pairs("2x2"):
        assert torch.equal(ranks[a]["bf16_reduce_dtype"]["shards"], ranks[b]["bf16_reduce_dtype"]["shards"])
    for r in ranks:
        run = r["bf16_reduce_dtype"]
        assert run["state_dtypes"] == ["torch.float32"]
        shard_numel = sum(sig_numel for sig_numel in _unit_numels(r))
        assert run["stats"]["dense_bytes"] == shard_numel * 2 * len(run["losses"])  # bf16 shards
        assert sum(run["losses"][-3:]) / 3 < run["losses"][0] - 0.4


def _unit_numels(rank_results):
    return [n for n, _ in rank_results["ef21_compact_top1"]["units"]]


def test_bad_inputs_raise_clear_errors(fsdp_launches):
    errors = fsdp_launches["2x2"][0]["bad_inputs"]
    assert errors["not_fsdp"].startswith("TypeError") and "fully_shard" in errors["not_fsdp"]
    assert errors["native_hsdp"].startswith("ValueError") and "2-D mesh" in errors["native_hsdp"]
    assert errors["shard_group"].startswith("ValueError") and "replicate_group (ranks [0, 1])" in errors["shard_group"]
    assert errors["not_a_group"].startswith("TypeError") and "got list" in errors["not_a_group"]
    assert errors["does_not_divide"] == (
        "ValueError: efcomm.register_fsdp: 1 replicas (replicate_group) x 2 shards (the FSDP mesh) "
        "must make the world size (4)"
    )
    assert errors["twice"].startswith("RuntimeError") and "already has an all-reduce hook" in errors["twice"]


def test_resume_at_the_same_size_is_exact(fsdp_launches):
    for rank, r in enumerate(fsdp_launches["2x2"]):
        assert torch.equal(r["resume_load"]["shards"], r["resume_save"]["shards"])
        assert r["resume_load"]["losses"] == r["resume_save"]["losses"]
        assert r["resume_load"]["source"] == rank
        assert "efcomm.checkpoint.load" in r["resume_load"]["plain_error"]


def _same_buckets(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[sig].keys() == b[sig].keys() and all(torch.equal(a[sig][n], b[sig][n]) for n in a[sig]) for sig in a
    )


@pytest.mark.parametrize("launch", ["2x2", "2x4"])
def test_a_load_that_names_the_replicate_group_reads_this_ranks_shard(fsdp_launches, launch):
    """efcomm.checkpoint.load(state, path, process_group=replicate group): the entry is chosen
    by the shard this rank holds, not by the rank in the group named (a replica index), so the
    state is the one the default group's load reads (before: another shard's entry, whose layouts
    matched no unit and were dropped unseen)."""
    for r in fsdp_launches[launch]:
        run = r["resume_load"]
        assert run["loaded"] and _same_buckets(run["by_replicas"], run["loaded"])
        assert run["by_replicas_source"] == run["source"]


@pytest.mark.parametrize("launch", ["2x2", "2x4"])
def test_a_checkpoint_that_matches_no_unit_raises_naming_both_sides(fsdp_launches, launch):
    """The checkpoint of the two-block transformer loaded into the one-block one: its block-1
    state matches no unit, and the load raises, naming what was loaded and what the model has."""
    shards = 2
    for rank, r in enumerate(fsdp_launches[launch]):
        error = r["resume_load"]["mismatch_error"]
        assert error is not None and "match no FSDP unit" in error
        assert f"'blocks.1' shard {rank % shards} of {shards}" in error
        assert f"'blocks.0' shard {rank % shards} of {shards}" in error and "<root>" in error


def test_resume_at_another_shard_count_relays_out_each_replicas_state(fsdp_launches):
    """Saved at 2 replicas x 2 shards, loaded at 2 x 4: each rank's unit states are cut from
    every shard of its replica, as FSDP2 cuts the parameters at 4 shards; re-assembled by hand
    from the shards, every tensor of every unit equals the saved one (h_i of that replica, and
    h). No dense restart; training goes on, replicas bitwise identical."""
    saved = fsdp_launches["2x2"]
    ranks = fsdp_launches["2x4"]
    for replica in range(2):
        before = [saved[replica * 2 + s]["resume_save"]["buckets"] for s in range(2)]
        after = [ranks[replica * 4 + s]["reshard_load"]["loaded"] for s in range(4)]
        assert all(len(b) == 3 for b in before + after)
        for name in ("h", "h_local"):
            full_before, full_after = assemble(before, name), assemble(after, name)
            assert full_before.keys() == full_after.keys() == set(UNITS)
            for unit in UNITS:
                for param, tensor in full_before[unit].items():
                    assert torch.equal(full_after[unit][param], tensor), (replica, name, unit, param)
    initialisations = saved[0]["resume_save"]["stats"]["initialisations"]
    for rank, r in enumerate(ranks):
        run = r["reshard_load"]
        assert run["source"] == (rank // 4) * 2  # shard 0 of the same replica
        assert run["stats"]["initialisations"] == initialisations
        assert all(math.isfinite(x) and x < 4.2 for x in run["losses"])
    for a, b in _replica_pairs("2x4"):
        assert torch.equal(ranks[a]["reshard_load"]["shards"], ranks[b]["reshard_load"]["shards"])


def test_elastic_resume_over_more_replicas(fsdp_launches):
    """Saved at 2 replicas x 2 shards, resumed at 4 x 2: rank r reads saved rank r mod 4 (the
    same shard), the state re-formed alike on every replica, no new dense start."""
    saved = fsdp_launches["2x2"][0]["resume_save"]["stats"]
    ranks = fsdp_launches["2x4"]
    for rank, r in enumerate(ranks):
        run = r["resume_load"]
        assert run["replicas"] == 4 and run["source"] == rank % 4
        assert run["stats"]["initialisations"] == saved["initialisations"]
        assert run["stats"]["steps"] == saved["steps"]
        assert all(math.isfinite(x) and x < 4.2 for x in run["losses"])
    for shard in range(2):
        for other in range(shard + 2, 8, 2):
            assert torch.equal(ranks[shard]["resume_load"]["shards"], ranks[other]["resume_load"]["shards"])


def test_killed_rank_fails_the_others_quickly(fsdp_launches):
    ranks = fsdp_launches["2x4"]
    assert ranks[-1]["killed_rank"] == {"died": True}
    for r in ranks[:-1]:
        assert r["killed_rank"]["error"] is not None
        assert r["killed_rank"]["seconds"] < 10


def test_register_fsdp_rejects_a_model_without_fsdp_units():
    with pytest.raises(TypeError, match="holds no FSDP module"):
        efcomm.register_fsdp(nn.Linear(4, 4), replicate_group=None)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        efcomm.register_fsdp("model")


def test_register_fsdp_rejects_the_ddp_only_options():
    with pytest.raises(ValueError, match="hierarchy does not apply"):
        efcomm.register_fsdp(nn.Linear(4, 4), hierarchy=2)
    with pytest.raises(ValueError, match="side_stream does not apply"):
        efcomm.register_fsdp(nn.Linear(4, 4), side_stream=True)


def test_plain_dcp_load_of_a_fresh_state_raises_efcomm_error():
    """A fresh EFState (DDP's too) loaded by a plain dcp.load, as checkpoint managers do for
    every Stateful: efcomm's error naming efcomm.checkpoint.load, not DCP's missing key.
    A checkpoint of a state without buckets loads that way."""
    state = efcomm.EFState("ef21", efcomm.TopK(0.1), min_compress_numel=16)
    signature = ("torch.float32", 64, (("w", (64,)),))
    for _ in range(3):
        g = torch.randn(64)
        InProcessTransport().run([bucket_step(state, BucketInput(g, signature, Worker(0, 1), 256, True))])
    with tempfile.TemporaryDirectory() as path:
        dcp.save({"efcomm": state}, checkpoint_id=path, no_dist=True)
        fresh = efcomm.EFState("ef21", efcomm.TopK(0.1), min_compress_numel=16)
        with pytest.raises(ValueError, match=r"efcomm\.checkpoint\.load"):
            dcp.load({"efcomm": fresh}, checkpoint_id=path, no_dist=True)
    with tempfile.TemporaryDirectory() as path:  # saved before its first step: loads either way
        dcp.save({"efcomm": efcomm.EFState("ef21", efcomm.TopK(0.1))}, checkpoint_id=path, no_dist=True)
        plain = efcomm.EFState("ef21", efcomm.TopK(0.1))
        dcp.load({"efcomm": plain}, checkpoint_id=path, no_dist=True)
        assert plain.buckets == {} and plain.stats.steps == 0


@pytest.mark.parametrize(
    "method, compressor", [("ef21", efcomm.TopK(0.1)), ("none", efcomm.QSGD(levels=7)), ("ef", efcomm.TopK(0.2))]
)
def test_scatter_step_runs_the_bucket_step_of_each_row(method, compressor):
    """The compressed reduce-scatter (efcomm.engine.scatter_step, in one process) gives
    rank j exactly what the flat bucket step over row j gives, step after step: the same
    messages, states and outputs, with one all-to-all instead of an all-gather per row."""
    world, shard = 4, 300
    scatter = [efcomm.EFState(method, compressor, min_compress_numel=16) for _ in range(world)]
    flat = [[efcomm.EFState(method, compressor, min_compress_numel=16) for _ in range(world)] for _ in range(world)]
    signature = ("torch.float32", world * shard, (("w", (world * shard,)),))
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        g = [torch.randn(world * shard, generator=gen) for _ in range(world)]
        outs = InProcessTransport().run(
            [
                scatter_step(scatter[r], BucketInput(g[r].clone(), signature, Worker(r, world), 0, True))
                for r in range(world)
            ]
        )
        for j in range(world):
            rows = [g[r].view(world, shard)[j].clone() for r in range(world)]
            sig = row_signature(signature, j, world)
            expected = InProcessTransport().run(
                [bucket_step(flat[j][r], BucketInput(rows[r], sig, Worker(r, world), 0, True)) for r in range(world)]
            )
            assert torch.equal(outs[j], expected[j]), (step, j)
    assert scatter[0].stats.initialisations == (1 if method == "ef21" else 0)


def _scatter_run(states: list, grads: list) -> list:
    """One compressed reduce-scatter step of every rank (in one process): rank r's output."""
    world = len(states)
    signature = ("torch.float32", grads[0].numel(), (("w", (grads[0].numel(),)),))
    return InProcessTransport().run(
        [
            scatter_step(states[r], BucketInput(grads[r].clone(), signature, Worker(r, world), 0, True))
            for r in range(world)
        ]
    )


def _row_means(grads: list) -> list:
    """Row j of the mean over ranks, for every j: the sum in rank order of g_r / world (the
    dense reduce-scatter's rounding)."""
    world = len(grads)
    total = grads[0] / world
    for g in grads[1:]:
        total = total + g / world
    return list(total.view(world, -1))


@pytest.mark.parametrize("method", ["ef", "ef21"])
def test_scatter_step_runs_dense_steps_first(method):
    """EFState(dense_steps=3) through the compressed reduce-scatter: the first three steps are
    the exact mean (a plain reduce-scatter); the method starts at the fourth (EF21 with its dense
    start, which is the mean too), and compresses from then on."""
    world, shard = 4, 300
    states = [efcomm.EFState(method, efcomm.TopK(0.1), min_compress_numel=16, dense_steps=3) for _ in range(world)]
    gen = torch.Generator().manual_seed(0)
    exact, initialisations, sent = [], [], []
    for _ in range(6):
        grads = [torch.randn(world * shard, generator=gen) for _ in range(world)]
        outs = _scatter_run(states, grads)
        exact.append(all(torch.equal(o, m) for o, m in zip(outs, _row_means(grads))))
        initialisations.append(states[0].stats.initialisations)
        sent.append(states[0].stats.history[-1]["bytes_sent"])
    start = 4 if method == "ef21" else 3  # the first compressed step
    assert exact == [True] * start + [False] * (6 - start)
    assert initialisations == [0, 0, 0] + [1 if method == "ef21" else 0] * 3
    dense = world * shard * 4  # this rank's reduce-scatter input
    k = math.ceil(0.1 * shard)
    assert sent[:3] == [dense] * 3
    assert sent[start:] == [world * 8 * k + 4] * (6 - start)  # a message per row (k values, k indices), the flag


@pytest.mark.parametrize("method", ["ef", "ef21"])
def test_scatter_step_restarts_every_row_after_an_overflow(method):
    """An inf in rank 1's row 2 (owned by rank 2) at step 2: rank 2's output of that step is
    non-finite (the step GradScaler skips); at the next step every rank restarts every row (the
    flag exchanged with the step says so on every rank), and the outputs are finite again (EF21:
    its dense start, the exact mean). Without the flag, rank 2's row stays non-finite for good."""
    world, shard = 4, 300
    states = [efcomm.EFState(method, efcomm.TopK(0.1), min_compress_numel=16) for _ in range(world)]
    gen = torch.Generator().manual_seed(1)
    finite = []
    for step in range(6):
        grads = [torch.randn(world * shard, generator=gen) for _ in range(world)]
        if step == 2:
            grads[1][2 * shard + 7] = math.inf
        outs = _scatter_run(states, grads)
        finite.append([bool(torch.isfinite(o).all()) for o in outs])
        if step == 3 and method == "ef21":
            assert all(torch.equal(o, m) for o, m in zip(outs, _row_means(grads)))
    assert finite[2] == [True, True, False, True]
    assert all(all(f) for step, f in enumerate(finite) if step != 2), finite
    assert [s.stats.nonfinite_resets for s in states] == [1] * world
    assert [s.stats.initialisations for s in states] == [2 if method == "ef21" else 0] * world


def test_compressed_reduce_scatter_identity_equals_fsdp(fsdp_launches):
    for r in fsdp_launches["2x2"]:
        run = r["compressed_reduce_scatter"]
        torch.testing.assert_close(run["identity"]["shards"], run["native"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["qsgd", "int8", "ef21"])
def test_compressed_reduce_scatter_trains_like_fsdp(fsdp_launches, name):
    """Stateless unbiased quantizers with ``none`` (no state), and EF21 + Top-5% with its
    state of every row: twice the unit (h_i and h of every row) per rank."""
    for r in fsdp_launches["2x2"]:
        run = r["compressed_reduce_scatter"]
        ours, native = run[name], run["native_losses"]
        assert abs(sum(ours["losses"][-3:]) / 3 - sum(native[-3:]) / 3) < 0.1
        assert ours["losses"][-1] < ours["losses"][0] - 0.5
        unit_numel = sum(numel for numel, _ in ours["units"])  # every row of every unit: the whole model
        assert ours["state_numel"] == (2 * unit_numel if name == "ef21" else 0)
        assert ours["stats"]["bytes_sent"] * 3 < ours["stats"]["dense_bytes"]


def test_compiled_ddp_with_efcomm_trains_like_compiled_ddp(fsdp_launches):
    """torch.compile(ddp, backend="aot_eager"): DDP's graph-splitting optimizer calls the
    efcomm hook eagerly per bucket (plain averaging through the engine's all-gather path,
    Identity), as it calls DDP's own all-reduce."""
    for r in fsdp_launches["2x2"]:
        run = r["compile"]
        torch.testing.assert_close(run["ddp_efcomm"], run["ddp_allreduce"], rtol=0, atol=1e-6)


def test_compiled_fsdp_with_register_fsdp_matches_the_reference(fsdp_launches):
    """register_fsdp's defaults on a compiled FSDP2 model (aot_eager): FSDP runs its reduce and
    the hook eagerly, and each hook call leaves what the reference (EF, bf16 values) computes
    from what the replicas received; three steps."""
    ranks = fsdp_launches["2x2"]
    for r in ranks:
        run = r["compile"]["fsdp"]
        assert run["steps"] == 3 and len(run["calls"]) == 3 * 3
        assert all(math.isfinite(x) for x in run["losses"])
    assert _check_hook_outputs(ranks, "2x2", lambda r: r["compile"]["fsdp"], ratio=0.01, value_dtype=torch.bfloat16)


def test_a_compiled_models_state_loads_into_the_plain_model(fsdp_launches):
    """Registered on torch.compile's module, whose paths start with '_orig_mod.': the layouts
    are named without it, so the state dict loads into the plain model's state, every layout
    at one of its units (before: the '_orig_mod.' layouts matched none, silently)."""
    for r in fsdp_launches["2x2"]:
        run = r["compile"]["fsdp"]
        assert len(run["saved_layouts"]) == 3
        assert not any("_orig_mod" in repr(layout) for layout in run["saved_layouts"])
        assert run["loaded_layouts"] == run["saved_layouts"]
        for _, _, params in run["loaded_layouts"]:
            assert dict(params)["#fsdp"][0] in run["plain_units"]


def test_compiled_python_reducer_mode_is_refused(fsdp_launches):
    error = fsdp_launches["2x2"][0]["compile"]["python_reducer_error"]
    assert "python-reducer" in error and "once per parameter" in error


def test_hsdp_wire_model_bytes_and_times():
    """Native HSDP all-reduces each GPU's 1/L shard among N nodes (2 (N-1)/N D/L bytes);
    efcomm all-gathers the shard's message ((N-1) M(D/L)); both share the reduce-scatter."""
    from efcomm.wire_model import NVLINK, Topology, hsdp_rows

    d, compute, overhead = 8e9, 0.2, 0.01
    rows = hsdp_rows(d, lambda fraction: 1e6 * fraction, compute, overhead, topologies=[Topology(8, 8)])
    hsdp, ours = rows
    assert hsdp["exchange"] == "hsdp" and ours["exchange"] == "efcomm hsdp"
    assert hsdp["intra_bytes"] == ours["intra_bytes"] == 7 / 8 * d
    assert hsdp["inter_bytes"] == pytest.approx(2 * 7 / 8 * d / 8)
    assert ours["inter_bytes"] == pytest.approx(7 * 1e6 / 8)
    for name, seconds in hsdp["predicted_s"].items():
        bandwidth = next(n.bandwidth for n in efcomm.wire_model.NETWORKS if n.name == name)
        assert seconds == pytest.approx(compute + 7 / 8 * d / NVLINK.bandwidth + hsdp["inter_bytes"] / bandwidth)
        assert ours["predicted_s"][name] == pytest.approx(
            compute + overhead + 7 / 8 * d / NVLINK.bandwidth + ours["inter_bytes"] / bandwidth
        )


def test_hsdp_inter_bytes_counts_small_shards_dense():
    top = efcomm.TopK(**COMPACT_TOP1)
    assert hsdp_inter_bytes([100], top, torch.float32, 256) == 400  # below min_compress_numel: dense
    assert hsdp_inter_bytes([5000], top, torch.float32, 256) == top.message_nbytes(5000, torch.float32)
    assert hsdp_inter_bytes([100, 5000], top, torch.float32, 256) == 400 + top.message_nbytes(5000, torch.float32)


@pytest.mark.parametrize("case", ["fp16", "divide_factor"])
def test_fp16_reduce_dtype_and_divide_factor_equal_native_hsdp(fsdp_launches, case):
    """fp16: FSDP divides part of the mean after the hook; a divide factor (on every unit):
    native HSDP sums over the replicas. Plain averaging through efcomm gives native HSDP's
    gradient in both."""
    for r in fsdp_launches["2x2-hooks"]:
        run = r["reduce_scaling"][case]
        torch.testing.assert_close(run["efcomm"], run["native"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["fp16", "divide_factor"])
def test_fp16_reduce_dtype_and_divide_factor_with_error_feedback_match_the_reference(fsdp_launches, case):
    """The same two cases with EF + Top-5% (compressing; fp16 with state_dtype=float32): each
    hook call leaves, bit for bit, the reference's mean over the replicas of what they received
    (fp16: rounded to fp16, FSDP divides the rest after the hook), or (divide factor) that mean
    times the number of replicas, the sum native HSDP takes."""
    ranks = fsdp_launches["2x2-hooks"]
    for r in ranks:
        calls = r["reduce_scaling"][case]["ef"]["calls"]
        assert len(calls) == 4 * 3
        assert {c["out"].dtype for c in calls} == {torch.float16 if case == "fp16" else torch.float32}
    factor = 2 if case == "divide_factor" else 1
    pick = lambda r: r["reduce_scaling"][case]["ef"]  # noqa: E731
    assert _check_hook_outputs(ranks, "2x2-hooks", pick, ratio=0.05, factor=factor) == 2 * 2 * 4 * 3


def test_nonfinite_step_restarts_every_unit_alike(fsdp_launches):
    """An overflow on rank 0 at step 3, between replicas and in the compressed reduce-scatter
    (EF21): the step is skipped everywhere, every rank restarts every unit at the next step,
    and training goes on finite, the ranks that must agree bitwise identical."""
    ranks = fsdp_launches["2x2"]
    for r in ranks:
        for run in (r["nonfinite"], r["nonfinite"]["reduce_scatter"]):
            assert run["skipped"] == [3] and run["finite"]
            assert run["stats"]["nonfinite_resets"] == run["units"] == 3
            assert run["stats"]["initialisations"] == 2 * run["units"]  # the start, and the restart
    for a, b in _replica_pairs("2x2"):
        assert torch.equal(ranks[a]["nonfinite"]["shards"], ranks[b]["nonfinite"]["shards"])


@requires_cuda
def test_register_fsdp_on_cuda_matches_cpu():
    """The hook on CUDA (FSDP's all-reduce stream, NCCL) against the same run on the CPU
    (gloo), one rank: EF21 + Identity equal to rounding; compact Top-1% trains and sends the
    wire model's bytes, its state on the device. Not run here: this machine has no GPU."""
    (r,) = spawn(devices_worker, 1, ("cpu", "cuda"))
    torch.testing.assert_close(r[("cuda", "identity")]["shards"], r[("cpu", "identity")]["shards"], rtol=0, atol=1e-4)
    for device in ("cpu", "cuda"):
        run = r[(device, "top1")]
        per_step = [b - a for a, b in zip(run["inter_bytes"], run["inter_bytes"][1:])]
        expected = hsdp_inter_bytes([n for n, _ in run["units"]], efcomm.TopK(**COMPACT_TOP1), torch.float32, 256)
        assert per_step == [expected] * len(per_step)
        assert run["losses"][-1] < run["losses"][0] - 0.5
        assert run["state_devices"] == [device]


# The default CUDA Top-k select reads a count on the host (docs/fsdp.md, "CUDA and the host").
SYNC_SELECTS = [
    "radix2",
    pytest.param("radix", marks=pytest.mark.xfail(strict=True, reason="the default select reads a count on the host")),
]


@requires_cuda
@pytest.mark.parametrize("select", SYNC_SELECTS)
def test_register_fsdp_hooks_do_not_synchronize_on_cuda(select):
    """Every unit's hook (register_fsdp's defaults, and EF21 + compact Top-1%) and the compressed
    reduce-scatter's step, past their first steps, under torch.cuda.set_sync_debug_mode("error"):
    no host synchronisation with the sync-free Top-k select (radix2); the default select reads a
    count per encode. Not run here: this machine has no GPU."""
    (r,) = spawn(sync_worker, 1, select)
    assert r["calls"] == 2 * 3 * 3 + 3  # two registrations x 3 steps x 3 units, and 3 scatter steps
    assert r["errors"] == []


def test_devices_worker_runs_on_the_cpu():
    """The CUDA test's worker, CPU half only (so that its code runs here too)."""
    (r,) = spawn(devices_worker, 1, ("cpu",))
    run = r[("cpu", "top1")]
    per_step = [b - a for a, b in zip(run["inter_bytes"], run["inter_bytes"][1:])]
    assert (
        per_step
        == [hsdp_inter_bytes([n for n, _ in run["units"]], efcomm.TopK(**COMPACT_TOP1), torch.float32, 256)] * 9
    )
    assert run["losses"][-1] < run["losses"][0] - 0.5 and run["state_devices"] == ["cpu"]


def test_bench_fsdp_report_and_arguments(tmp_path, capsys):
    """benchmarks/bench_fsdp.py's report from given timings (a run spawns its own processes:
    too slow for the suite), and its argument checks."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_fsdp

    args = bench_fsdp.parse_args(["--tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert (args.dim, args.blocks, args.steps) == (64, 2, 8)
    results = [
        {"exchange": "hsdp", "median_s": 0.1, "min_s": 0.1, "max_s": 0.1, "between_replicas_bytes_per_step": 1e5},
        {
            "exchange": "efcomm-hsdp",
            "median_s": 0.12,
            "min_s": 0.1,
            "max_s": 0.2,
            "between_replicas_bytes_per_step": 1e3,
        },
    ]
    bench_fsdp.report(results, args, 4)
    text = capsys.readouterr().out
    assert "8x8" in text and "64x8" in text and "efcomm overhead 20.0 ms" in text
    assert (tmp_path / "bench_fsdp.json").exists()
    with pytest.raises(SystemExit):
        bench_fsdp.parse_args(["--replicas", "1"])
