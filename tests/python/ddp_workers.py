"""Worker functions for the multi-process DDP tests (spawned processes import this module).

Starting processes is what makes these tests slow, so one launch runs many scenarios in a
row (``scenarios_worker``), each with a fresh model, DDP wrapper and efcomm state on the
same process group, and saves every scenario's results."""

import copy
import gc
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

import efcomm


def free_init_method() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def shutdown() -> None:
    """Ends a worker once its results are saved: waits for every rank (a rank that leaves
    while a peer still talks to it makes gloo abort), leaves the group, then exits without
    interpreter finalization. At finalization gloo's threads may still hold work objects
    whose tensors need the GIL, which aborts the process now and then (SIGABRT, "terminate
    called without an active exception"; see pytorch/pytorch#179291)."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn, world_size: int, *args) -> list:
    """Runs fn(rank, world_size, init_method, result_dir, *args) on world_size gloo ranks."""
    with tempfile.TemporaryDirectory() as result_dir:
        mp.spawn(fn, args=(world_size, free_init_method(), result_dir, *args), nprocs=world_size, join=True)
        return [torch.load(Path(result_dir) / f"rank{r}.pt") for r in range(world_size)]


def _join_group(rank, world_size, init_method) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def _mlp(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(dtype)


def _train(ddp, opt, gen, steps, *, dtype=torch.float32, skip_nonfinite=False, corrupt=None, rank=0):
    """``steps`` steps of cross-entropy on random batches; returns the losses and skipped steps."""
    losses, skipped = [], []
    for step in range(steps):
        x, y = torch.randn(8, 16, generator=gen).to(dtype), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x).float(), y)
        if corrupt is not None and corrupt == (step, rank):
            loss = loss * float("inf")
        loss.backward()
        if skip_nonfinite and not all(torch.isfinite(p.grad).all() for p in ddp.module.parameters()):
            skipped.append(step)
        else:
            opt.step()
        losses.append(float(loss))
    return losses, skipped


def _small_ddp(rank, method="ef21", compressor=None, *, dtype=torch.float32, ddp_options=None, **options):
    model = _mlp(dtype)
    ddp = DistributedDataParallel(model, **(ddp_options or {}))
    compressor = efcomm.TopK(0.1) if compressor is None else compressor
    state = efcomm.register(ddp, method, compressor, min_compress_numel=32, **options)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    return model, ddp, state, opt, torch.Generator().manual_seed(rank)


class OutOfOrder(nn.Module):
    """Parameters registered in a different order than the forward uses them, so DDP's
    bucket rebuild after the first iteration changes the bucket layout. ``unused`` takes no
    part in the forward (for find_unused_parameters)."""

    def __init__(self, unused: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.last = nn.Linear(64, 4)
        self.first = nn.Linear(16, 64)
        self.middle = nn.Linear(64, 64)
        self.unused = nn.Linear(8, 8) if unused else None

    def forward(self, x):
        return self.last(torch.relu(self.middle(torch.relu(self.first(x)))))


def scenario_gradient_as_bucket_view(rank, world, ctx):
    """The same training with and without gradient_as_bucket_view."""
    params = []
    for view in (False, True):
        model, ddp, state, opt, gen = _small_ddp(rank, ddp_options={"gradient_as_bucket_view": view})
        _train(ddp, opt, gen, 20)
        params.append(_flat_params(model))
    return {"plain": params[0], "view": params[1]}


def scenario_layout_change(rank, world, ctx):
    """Buckets of one layer each (caps below one layer's size), in registration order at
    first, then in gradient-ready order after DDP's rebuild."""
    model = OutOfOrder()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)
    state = efcomm.register(ddp, "ef21", efcomm.TopK(0.1), min_compress_numel=32)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)
    signatures = []
    for _ in range(5):
        _train(ddp, opt, gen, 1)
        signatures.append(list(state.buckets))
    return {
        "params": _flat_params(model),
        "initialisations": state.stats.initialisations,
        "relayouts": state.stats.relayouts,
        "signatures": signatures,
    }


def scenario_unused_parameters_and_static_graph(rank, world, ctx):
    """find_unused_parameters (buckets never rebuilt; the unused parameter's gradient stays
    zero) and static_graph (buckets rebuilt after the second iteration)."""
    out = {}
    for name, options in (("unused", {"find_unused_parameters": True}), ("static", {"static_graph": True})):
        model = OutOfOrder(unused=name == "unused")
        ddp = DistributedDataParallel(model, bucket_cap_mb=0.001, **options)
        state = efcomm.register(ddp, "ef21", efcomm.TopK(0.1), min_compress_numel=32)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        losses, _ = _train(ddp, opt, torch.Generator().manual_seed(rank), 10)
        out[name] = {
            "params": _flat_params(model),
            "losses": losses,
            "steps": state.stats.steps,
            "initialisations": state.stats.initialisations,
            "relayouts": state.stats.relayouts,
        }
    return out


def scenario_no_sync(rank, world, ctx):
    """Gradient accumulation: two micro-batches under no_sync, then a synchronising one."""
    model, ddp, state, opt, gen = _small_ddp(rank)
    for _ in range(6):
        opt.zero_grad()
        for micro in range(3):
            x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
            if micro < 2:
                with ddp.no_sync():
                    nn.functional.cross_entropy(ddp(x), y).backward()
            else:
                nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return {"params": _flat_params(model), "steps": state.stats.steps}


def scenario_bfloat16_model_float32_state(rank, world, ctx):
    model, ddp, state, opt, gen = _small_ddp(rank, dtype=torch.bfloat16, state_dtype=torch.float32)
    losses, _ = _train(ddp, opt, gen, 20, dtype=torch.bfloat16)
    return {
        "params": _flat_params(model),
        "grad_dtype": model[0].weight.grad.dtype,
        "state_dtypes": {t.dtype for b in state.buckets.values() for t in b.tensors.values()},
        "losses": losses,
    }


def scenario_nonfinite(rank, world, ctx):
    """Rank 1's loss is inf at step 5; every rank skips that optimizer step, as GradScaler
    does, and training goes on with finite state (Top-k values and quantizer headers)."""
    out = {}
    for name, compressor in (("topk", None), ("int8", efcomm.Int8(block=64))):
        model, ddp, state, opt, gen = _small_ddp(rank, "ef21", compressor)
        _, skipped = _train(ddp, opt, gen, 12, skip_nonfinite=True, corrupt=(5, 1), rank=rank)
        out[name] = {
            "params": _flat_params(model),
            "skipped": skipped,
            "resets": state.stats.nonfinite_resets,
            "buckets": len(state.buckets),
            "state_finite": all(torch.isfinite(t).all() for b in state.buckets.values() for t in b.tensors.values()),
        }
    return out


def scenario_every_exchange(rank, world, ctx):
    """Each kind of exchange through real collectives: the all-gather (Top-k, a quantizer,
    Rand-k, Clip21's dense messages), the dense start's all-reduce, and the lazy methods'
    choice gather and broadcasts."""
    configs = {
        "ef21-topk": ("ef21", None),
        "ef21-int8": ("ef21", efcomm.Int8()),
        "ef21-randk": ("ef21", efcomm.RandK(0.1)),
        "clip21": (efcomm.methods.Clip21(tau=1.0), None),
        "lag": (efcomm.methods.LAG(zeta=1.0), None),
        "adacgd": (efcomm.methods.AdaCGD(ratios=(0.02, 0.1, 0.3), zeta=0.5), None),
    }
    out = {}
    for name, (method, compressor) in configs.items():
        model, ddp, state, opt, gen = _small_ddp(rank, method, compressor)
        losses, _ = _train(ddp, opt, gen, 15)
        out[name] = {
            "params": _flat_params(model),
            "losses": losses,
            "sent": state.stats.bytes_sent,
            "dense": state.stats.dense_bytes,
        }
    return out


def scenario_smoothness(rank, world, ctx):
    """Least squares on rank-scaled data: rank r's loss has Hessian 2 X_r^T X_r / m, known
    exactly; the estimates are compared with it, then EF21-W trains with the weights."""
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(64, 1100, generator=gen) * (1 + 2 * rank)
    y = torch.randn(64, 1, generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(1100, 1, bias=False)
    loss_fn = nn.functional.mse_loss
    estimates = efcomm.estimate_smoothness(model, loss_fn, [(x, y)], iterations=100)
    exact = float(torch.linalg.eigvalsh(2 * x.double().T @ x.double() / 64).max())
    ddp = DistributedDataParallel(model)
    method = efcomm.methods.EF21W.from_smoothness(estimates)
    efcomm.register(ddp, method, efcomm.TopK(0.1), min_compress_numel=32)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5 / max(estimates))
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return {
        "estimates": estimates,
        "exact": exact,
        "weights": method.weights,
        "losses": losses,
        "params": _flat_params(model),
    }


def scenario_join(rank, world, ctx):
    """Rank r has 10 + 3r batches: ranks that run out keep joining with zero gradients."""
    model, ddp, state, opt, gen = _small_ddp(rank)
    with Join([ddp]):
        _train(ddp, opt, gen, 10 + 3 * rank)
    return {"h": [b.tensors["h"] for b in state.buckets.values()], "steps": state.stats.steps}


def scenario_mismatch(rank, world, ctx):
    """Ranks with different configurations: every rank must raise (run last in a launch)."""
    torch.manual_seed(0)
    ddp = DistributedDataParallel(nn.Linear(64, 64))
    efcomm.register(ddp, "ef21", efcomm.TopK(0.1 if rank == 0 else 0.2), min_compress_numel=16)
    try:
        ddp(torch.randn(8, 64)).sum().backward()
        return {"error": None}
    except RuntimeError as e:
        return {"error": str(e)}


def _multi_bucket_ddp():
    """OutOfOrder in buckets of one layer each, EF21 + Top-10%."""
    model = OutOfOrder()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)
    state = efcomm.register(ddp, "ef21", efcomm.TopK(0.1), min_compress_numel=32)
    return model, ddp, state, torch.optim.SGD(ddp.parameters(), lr=0.05)


def _train_fixed(ddp, opt, rank, start, steps):
    """Steps whose batches depend only on (rank, step), so a resumed run sees the same data."""
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(1000 * rank + step)
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()


def _record(model, state):
    return {"params": _flat_params(model), "state": state.state_dict(), "stats": state.stats.state_dict()}


def _save_files(name, world, rank, ctx, model, opt, state):
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "ef_state": state.state_dict()},
        f"{ctx['directory']}/{name}-{world}.rank{rank}.pt",
    )


def _load_files(name, world, rank, ctx, model, opt, state=None):
    saved = torch.load(f"{ctx['directory']}/{name}-{world}.rank{rank}.pt")
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    if state is not None:
        state.load_state_dict(saved["ef_state"])


def scenario_resume_save(rank, world, ctx):
    """Exact resume across processes, first half: the uninterrupted run (20 steps) and a run
    of 10 steps saved to per-rank files."""
    model, ddp, state, opt = _multi_bucket_ddp()
    _train_fixed(ddp, opt, rank, 0, 20)
    uninterrupted = _record(model, state)
    del model, ddp, state, opt
    gc.collect()
    model, ddp, state, opt = _multi_bucket_ddp()
    _train_fixed(ddp, opt, rank, 0, 10)
    _save_files("resume", world, rank, ctx, model, opt, state)
    return {"uninterrupted": uninterrupted}


def scenario_resume_load(rank, world, ctx):
    """Exact resume, second half, in new processes: DDP starts from its initial buckets."""
    model, ddp, state, opt = _multi_bucket_ddp()
    _load_files("resume", world, rank, ctx, model, opt, state)
    _train_fixed(ddp, opt, rank, 10, 10)
    return {"resumed": _record(model, state)}


def scenario_elastic_save(rank, world, ctx):
    """Trains 10 steps; saves per-rank files and a DCP checkpoint for a resume at another size."""
    from efcomm import checkpoint

    model, ddp, state, opt = _multi_bucket_ddp()
    _train_fixed(ddp, opt, rank, 0, 10)
    _save_files("elastic", world, rank, ctx, model, opt, state)
    checkpoint.save(state, f"{ctx['directory']}/dcp-{world}")
    return _record(model, state)


def scenario_elastic_resume(rank, world, ctx):
    """Resume of the previous launch's checkpoint (saved at ctx["saved_world"] ranks): rank r
    reads file r mod saved_world, trains 10 steps and saves its own files and DCP checkpoint;
    then a fresh state loads the DCP checkpoint (efcomm.checkpoint.load) and trains."""
    from efcomm import checkpoint

    saved_world = ctx["saved_world"]
    out = {}
    model, ddp, state, opt = _multi_bucket_ddp()
    _load_files("elastic", saved_world, rank % saved_world, ctx, model, opt, state)
    _train_fixed(ddp, opt, rank, 10, 10)
    _save_files("elastic", world, rank, ctx, model, opt, state)
    checkpoint.save(state, f"{ctx['directory']}/dcp-{world}")
    out["files"] = _record(model, state)
    del model, ddp, state, opt
    gc.collect()
    dist.barrier()
    model, ddp, state, opt = _multi_bucket_ddp()
    _load_files("elastic", saved_world, rank % saved_world, ctx, model, opt)
    out["dcp_source"] = checkpoint.load(state, f"{ctx['directory']}/dcp-{saved_world}")
    _train_fixed(ddp, opt, rank, 10, 10)
    out["dcp"] = _record(model, state)
    return out


def scenario_elastic_missing(rank, world, ctx):
    """Rank 2 loads no state while the others do: every rank must fail at once with a clear
    error (run last in a launch)."""
    model, ddp, state, opt = _multi_bucket_ddp()
    if rank != 2:
        _load_files("elastic", ctx["saved_world"], rank % ctx["saved_world"], ctx, model, opt, state)
    start = time.monotonic()
    try:
        _train_fixed(ddp, opt, rank, 10, 1)
        error = None
    except RuntimeError as e:
        error = str(e)
    return {"error": error, "seconds": time.monotonic() - start}


def scenario_killed_rank(rank, world, ctx):
    """Rank 2 dies in the middle of training (run last: the group is broken afterwards):
    the others must fail with an error within seconds, not hang."""
    model, ddp, state, opt, gen = _small_ddp(rank)
    _train(ddp, opt, gen, 3)
    if rank == 2:
        return {"died": True}
    start = time.monotonic()
    try:
        _train(ddp, opt, gen, 20)
        error = None
    except RuntimeError as e:
        error = str(e)
    return {"error": error, "seconds": time.monotonic() - start}


SCENARIOS = {name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")}

import update_workers  # noqa: E402  (efcomm.compress_updates' scenarios: it imports this module's helpers)

SCENARIOS.update(update_workers.SCENARIOS)

# The launches of the DDP tests, in order (each a world size and its scenarios; a scenario
# that makes every rank raise, or breaks the group, comes last). Files pass from one launch
# to the next.
LAUNCHES = (
    (
        "first",
        2,
        [
            "gradient_as_bucket_view",
            "layout_change",
            "unused_parameters_and_static_graph",
            "no_sync",
            "bfloat16_model_float32_state",
            "nonfinite",
            "every_exchange",
            "smoothness",
            "resume_save",
            "elastic_save",
            "mismatch",
            "updates_dense_equivalence",
            "updates_adamw_topk",
            "updates_nonfinite",
            "updates_resume_save",
            "updates_mismatch",
        ],
    ),
    ("three", 3, ["join", "elastic_resume", "elastic_missing", "updates_resume_load", "killed_rank"]),
    ("second", 2, ["resume_load", "elastic_resume", "updates_resume_load"]),
)
BREAKS_GROUP = "killed_rank"


def scenarios_worker(rank, world_size, init_method, result_dir, names, ctx):
    """Runs the named scenarios in a row on one process group; saves {name: result}."""
    _join_group(rank, world_size, init_method)
    results = {}
    for name in names:
        results[name] = SCENARIOS[name](rank, world_size, ctx)
        gc.collect()  # the scenario's DDP objects go before the next one starts
        if name not in ("mismatch", "elastic_missing", BREAKS_GROUP):
            dist.barrier()
    torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    if BREAKS_GROUP in names:  # a dead peer: leave without the group's barrier
        sys.stdout.flush()
        os._exit(0)
    shutdown()


def run_launches(directory: str) -> dict:
    """Every launch of LAUNCHES, in order: {launch: [rank results]}."""
    results, saved_world = {}, None
    for name, world, names in LAUNCHES:
        ctx = {"directory": directory, "saved_world": saved_world}
        results[name] = spawn(scenarios_worker, world, names, ctx)
        saved_world = world
    return results


def hierarchy_worker(rank, world_size, init_method, result_dir):
    """EF21 + Top-10% through hierarchies, on 8 ranks: each half (ranks 0-3 and 4-7) as 2
    nodes of 2, then all 8 as 2 nodes of 4. Each run takes 6 steps; then a new DDP model and
    state load the checkpoint of step 3 and run steps 3 to 6 again."""
    from efcomm.hierarchy import Hierarchy

    _join_group(rank, world_size, init_method)
    # Every rank creates every group, in one order (torch.distributed.new_group's rule).
    half, _ = dist.new_subgroups_by_enumeration([[0, 1, 2, 3], [4, 5, 6, 7]])
    pairs, _ = dist.new_subgroups_by_enumeration([[0, 1], [2, 3], [4, 5], [6, 7]])
    peers, _ = dist.new_subgroups_by_enumeration([[0, 2], [1, 3], [4, 6], [5, 7]])

    def run(local, group, hierarchy):
        def make():
            model = _mlp()
            ddp = DistributedDataParallel(model, process_group=group)
            state = efcomm.register(ddp, "ef21", efcomm.TopK(0.1), min_compress_numel=32, hierarchy=hierarchy)
            return model, ddp, state, torch.optim.SGD(ddp.parameters(), lr=0.05)

        model, ddp, state, opt = make()
        _train_fixed(ddp, opt, rank, 0, 3)
        saved = copy.deepcopy(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "ef_state": state.state_dict()}
        )
        _train_fixed(ddp, opt, rank, 3, 3)
        out = {
            "local": local,
            "params": _flat_params(model),
            "state": state.state_dict(),
            "stats": state.stats.state_dict(),
        }
        del model, ddp, state, opt
        gc.collect()
        model, ddp, state, opt = make()
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state.load_state_dict(saved["ef_state"])
        _train_fixed(ddp, opt, rank, 3, 3)
        out["resumed_params"] = _flat_params(model)
        return out

    results = {"2x2": run(2, half, Hierarchy(2, pairs, peers))}
    dist.barrier()
    results["2x4"] = run(4, None, 4)
    torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    shutdown()
