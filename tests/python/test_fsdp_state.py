"""efcomm.fsdp_state and a unit's hook in one process, with a one-rank gloo group: which saved
entry a register_fsdp state reads from a DCP checkpoint, its re-layout at another shard count,
names without wrapper prefixes, the errors when a loaded state matches no unit (the checkpoint
written by hand: every rank's entry of a 2 replicas x 2 shards run, cut from full tensors as
FSDP2 cuts parameters; the units stand-ins with a place and parameters); and a unit's hook fed
by hand (its output, the end of its steps after FSDP's final callback, its byte counts). The
same paths run under FSDP2, on several ranks, in test_fsdp.py."""

import math
import zlib
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from reference import topk_indices

import efcomm
from efcomm import checkpoint
from efcomm.fsdp import _end_steps_with_backward, _UnitHook
from efcomm.fsdp_state import FSDPState, canonical_name
from efcomm.stats import CommStats

PARAMS = {  # unit -> (parameter name, full shape); dim 0 of 5 and 3 rows: padded shards
    "blocks.0": (("blocks.0.w", (5, 3)), ("blocks.0.b", (5,))),
    "<root>": (("head.w", (3, 4)),),
}
REPLICAS, SHARDS = 2, 2
METHOD = ("ef21", efcomm.TopK(0.1))


class Unit:
    """A stand-in for register_fsdp's unit hook: its parameters and its place in the mesh."""

    def __init__(self, path: str, shard: int, shards: int, params=None) -> None:
        self.path, self.shard, self.shards = path, shard, shards
        self.params = PARAMS[path] if params is None else params

    def places(self) -> list:
        return [(("#fsdp", (self.path, self.shard, self.shards)),)]


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _full(replica: int) -> dict:
    """{unit: {tensor name: {parameter: full flat tensor}}}: h_local of the replica, h shared."""
    out = {}
    for unit, params in PARAMS.items():
        out[unit] = {}
        for name in ("h_local", "h"):
            seed = zlib.crc32(repr((unit, name, replica if name == "h_local" else -1)).encode())
            gen = torch.Generator().manual_seed(seed)
            out[unit][name] = {p: torch.randn(math.prod(shape), generator=gen) for p, shape in params}
    return out


def _cut(full: dict, params: tuple, shard: int, shards: int) -> torch.Tensor:
    """A shard of the parameters' full tensors, by hand: rows [s c, (s + 1) c) of dim 0,
    c = ceil(d0 / shards), zero-padded to c rows."""
    pieces = []
    for p, shape in params:
        rows, row = shape[0], math.prod(shape[1:])
        chunk = -(-rows // shards)
        piece = torch.zeros(chunk * row)
        start, stop = min(shard * chunk, rows), min((shard + 1) * chunk, rows)
        piece[: (stop - start) * row] = full[p][start * row : stop * row]
        pieces.append(piece)
    return torch.cat(pieces)


def _entry(replica: int, shard: int, prefix: str = "") -> dict:
    """Saved rank (replica, shard)'s entry, as FSDPState.state_dict writes it."""
    full = _full(replica)
    buckets = []
    for unit, params in PARAMS.items():
        named = tuple((prefix + p, shape) for p, shape in params)
        path = prefix + unit if unit != "<root>" else (prefix.rstrip(".") or unit)
        numel = sum(-(-shape[0] // SHARDS) * math.prod(shape[1:]) for _, shape in params)
        tensors = {name: _cut(full[unit][name], params, shard, SHARDS) for name in ("h_local", "h")}
        signature = ("torch.float32", numel, (("#fsdp", (path, shard, SHARDS)),) + named)
        buckets.append({"signature": signature, "steps": 7, "tensors": tensors, "hints": {}})
    return {
        "config": FSDPState(*METHOD).config(),
        "world_size": REPLICAS,
        "rank": replica,
        "num_buckets": len(buckets),
        "stats": CommStats(steps=8).state_dict(),
        "buckets": buckets,
        "fsdp": {"replica": replica, "replicas": REPLICAS, "shard": shard, "shards": SHARDS},
    }


def _save(path, prefix: str = "") -> None:
    ranks = {str(q * SHARDS + s): _entry(q, s, prefix) for q in range(REPLICAS) for s in range(SHARDS)}
    checkpoint.dcp.save({"efcomm": {"ranks": ranks}}, checkpoint_id=str(path))


def _state(replica: int, replicas: int, shard: int, shards: int, units=None) -> FSDPState:
    placement = {"replica": replica, "replicas": replicas, "shard": shard, "shards": shards}
    state = FSDPState(*METHOD, global_rank=replica * shards + shard, placement=placement)
    state.units = [Unit(u, shard, shards) for u in PARAMS] if units is None else units
    return state


def _load(state: FSDPState, path) -> int:
    """checkpoint.load, which must not raise here (its errors made test failures)."""
    try:
        return checkpoint.load(state, str(path))
    except ValueError as error:
        pytest.fail(f"the load raised: {error}")


def _loaded(state: FSDPState) -> dict:
    """{unit: {tensor name: tensor}} of a loaded state."""
    return {dict(sig[2])["#fsdp"][0]: b.tensors for sig, b in state.buckets.items()}


def test_the_entry_is_chosen_by_the_shard_this_rank_holds(tmp_path, one_rank_group):
    """Replica 1's shard 1 (global rank 3) reads saved rank 3's entry, whatever the rank of the
    process group the load runs over (0 here, as a replicate group's rank would be)."""
    _save(tmp_path)
    state = _state(1, REPLICAS, 1, SHARDS)
    assert _load(state, tmp_path) == 3
    full = _full(1)
    for unit, tensors in _loaded(state).items():
        for name in ("h_local", "h"):
            assert torch.equal(tensors[name], _cut(full[unit][name], PARAMS[unit], 1, SHARDS))
    assert state.stats.steps == 8 and all(b.steps == 7 for b in state.buckets.values())


def test_another_shard_count_relays_out_one_replicas_shards(tmp_path, one_rank_group):
    """At 4 shards, replica 1's shard 2 is cut from the full tensors of saved replica 1 (both
    of its shards read and re-assembled), as FSDP2 cuts the parameters at 4 shards."""
    _save(tmp_path)
    state = _state(1, REPLICAS, 2, 4)
    assert _load(state, tmp_path) == 2  # saved replica 1's first shard
    full = _full(1)
    loaded = _loaded(state)
    assert loaded.keys() == PARAMS.keys()
    for unit, tensors in loaded.items():
        for name in ("h_local", "h"):
            assert torch.equal(tensors[name], _cut(full[unit][name], PARAMS[unit], 2, 4)), (unit, name)


def test_wrapper_prefixes_are_stripped_from_loaded_layouts(tmp_path, one_rank_group):
    """A checkpoint whose paths and parameter names carry torch.compile's '_orig_mod.' loads
    into the units of the plain model."""
    assert canonical_name("_orig_mod.blocks.0._checkpoint_wrapped_module.w") == "blocks.0.w"
    _save(tmp_path, prefix="_orig_mod.")
    state = _state(0, REPLICAS, 1, SHARDS)
    _load(state, tmp_path)
    assert sorted(_loaded(state)) == sorted(PARAMS)
    assert not any("_orig_mod" in repr(sig) for sig in state.buckets)


def test_a_loaded_state_that_matches_no_unit_raises_naming_both_sides(tmp_path, one_rank_group):
    """A model without the unit 'blocks.0', and one whose 'blocks.0' has other parameters."""
    _save(tmp_path)
    state = _state(0, REPLICAS, 0, SHARDS, units=[Unit("<root>", 0, SHARDS)])
    with pytest.raises(ValueError, match=r"match no FSDP unit") as error:
        checkpoint.load(state, str(tmp_path))
    assert "'blocks.0' shard 0 of 2" in str(error.value) and "'<root>' shard 0 of 2" in str(error.value)
    assert state.buckets == {}
    other = (("blocks.0.v", (5, 3)), ("blocks.0.b", (5,)))
    state = _state(0, REPLICAS, 0, SHARDS, units=[Unit("<root>", 0, SHARDS), Unit("blocks.0", 0, SHARDS, other)])
    with pytest.raises(ValueError, match=r"exists with other parameters .*blocks\.0\.w.*blocks\.0\.v"):
        checkpoint.load(state, str(tmp_path))


def test_a_loaded_state_of_another_dtype_raises_at_the_units_first_step(tmp_path, one_rank_group):
    _save(tmp_path)
    state = _state(0, REPLICAS, 0, SHARDS)
    _load(state, tmp_path)
    (sig,) = [s for s in state.buckets if dict(s[2])["#fsdp"][0] == "<root>"]
    with pytest.raises(ValueError, match=r"loaded for '<root>' shard 0 of 2 is 8 entries of torch.float32"):
        state.check_loaded([("torch.bfloat16",) + sig[1:]])


def test_a_checkpoint_without_the_shards_of_a_replica_raises(tmp_path, one_rank_group):
    ranks = {"0": _entry(0, 0)}  # replica 0's shard 1 missing
    checkpoint.dcp.save({"efcomm": {"ranks": ranks}}, checkpoint_id=str(tmp_path))
    with pytest.raises(ValueError, match=r"lacks the shards of saved replica 0"):
        checkpoint.load(_state(0, 1, 0, 4), str(tmp_path))


def test_a_units_hook_exchanges_and_ends_its_steps_after_fsdps_final_callback(one_rank_group):
    """A unit's hook (shard 0 of 2, one replica) fed by hand, EF + Top-5%: each call leaves the
    reference's output (one replica: C(g + e), e the error); FSDP's final callback, wrapped by
    register_fsdp, ends a step when a hook exchanged in that backward pass, and not after a
    micro-batch kept for later (set_requires_all_reduce(False)). Bytes by hand: the message of
    128 of 2560 entries (128 values, 128 indices) sent; native HSDP's all-reduce of the shard
    replaced; FSDP's reduce-scatter (2 shards) counted apart, the kept micro-batch's included."""
    params = (("blocks.0.w", (64, 80)),)
    group = SimpleNamespace(
        mesh_info=SimpleNamespace(shard_mesh_rank=0, shard_mesh_size=2),
        fsdp_params=[SimpleNamespace(sharded_param=object(), _orig_size=shape) for _, shape in params],
        all_reduce_grads=True,
        gradient_divide_factor=None,
    )
    names = {id(p.sharded_param): name for p, (name, _) in zip(group.fsdp_params, params)}
    placement = {"replica": 0, "replicas": 1, "shard": 0, "shards": 2}
    state = FSDPState("ef", efcomm.TopK(0.05), dist.group.WORLD, placement=placement, min_compress_numel=256)
    hook = _UnitHook(state, "_orig_mod.blocks.0", group, names)
    state.units.append(hook)
    fsdp_callbacks = []
    fsdp_state = SimpleNamespace(_root_post_backward_final_callback=lambda: fsdp_callbacks.append(1))
    _end_steps_with_backward(state, [SimpleNamespace(_get_fsdp_state=lambda: fsdp_state)])
    gen = torch.Generator().manual_seed(0)
    error = torch.zeros(2560)
    for step in range(3):
        g = torch.randn(2560, generator=gen)
        shard = g.clone()
        hook(shard)
        p = error + g
        idx = topk_indices(p, 128)
        expected = torch.zeros(2560)
        expected[idx] = p[idx]
        error = p.clone()
        error[idx] = 0.0
        assert torch.equal(shard, expected), step
        assert state.stats.steps == step
        fsdp_state._root_post_backward_final_callback()
        assert state.stats.steps == step + 1 and len(fsdp_callbacks) == step + 1
    group.all_reduce_grads = False  # a micro-batch FSDP keeps: no exchange, no step
    kept = torch.randn(2560, generator=gen)
    hook(kept)
    assert torch.equal(kept, torch.zeros(2560))
    fsdp_state._root_post_backward_final_callback()
    assert state.stats.steps == 3 and len(fsdp_callbacks) == 4
    assert hook.places() == [(("#fsdp", ("blocks.0", 0, 2)),)]
    assert state.stats.bytes_sent == 3 * (4 * 128 + 4 * 128)
    assert state.stats.dense_bytes == 3 * 2560 * 4
    assert state.stats.compression_factor == (3 * 2560 * 4) / (3 * 1024)
    assert state.stats.intra_node_bytes == 4 * 2 * 2560 * 4


def test_the_compressed_reduce_scatters_state_loads_at_its_own_world_size_only(tmp_path, one_rank_group):
    """Its state holds every row of every unit for one world size: at another, the load says so;
    and a checkpoint of the exchange between replicas does not load into it."""
    entry = dict(_entry(0, 0), fsdp={"rank": 0, "world": 2})
    checkpoint.dcp.save({"efcomm": {"ranks": {"0": entry}}}, checkpoint_id=str(tmp_path / "rs"))
    state = FSDPState(*METHOD, placement={"rank": 0, "world": 4})
    with pytest.raises(ValueError, match=r"saved by \[2\] rank\(s\) and this group has 4: .* does not re-form"):
        checkpoint.load(state, str(tmp_path / "rs"))
    _save(tmp_path / "replicas")
    with pytest.raises(
        ValueError, match=r"checkpoint of the exchange between replicas; this state runs the compressed"
    ):
        checkpoint.load(state, str(tmp_path / "replicas"))
