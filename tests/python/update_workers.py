"""Scenarios of efcomm.compress_updates over real gloo process groups (test_updates.py reads
their results). They run inside ddp_workers' launches (ddp_workers.LAUNCHES names them), so
they add no process start: each returns what its test checks."""

import copy
import gc
from pathlib import Path

import torch
import torch.distributed as dist
from ddp_workers import _flat_params, _mlp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import efcomm


def _batch(rank: int, step: int):
    gen = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)


def _steps(model, opt, rank, start, stop, *, corrupt=None, scaler=None):
    losses = []
    for step in range(start, stop):
        x, y = _batch(rank, step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if corrupt == (step, rank):
            loss = loss * float("inf")
        losses.append(float(loss.detach()))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return losses


def _gathered(flat: torch.Tensor) -> list:
    everyone = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, flat)
    return everyone


def _updates(method="ef", compressor=None, inner=torch.optim.SGD, lr=0.05, **options):
    model = _mlp()
    ddp = DistributedDataParallel(model)
    opt = efcomm.compress_updates(ddp, inner(ddp.parameters(), lr=lr), method, compressor, **options)
    return model, ddp, opt


def scenario_updates_dense_equivalence(rank, world, ctx):
    """Identity and an inner SGD: one exchange per step against DDP's dense SGD, and an
    exchange every 3 steps against periodic model averaging written out by hand."""
    model = _mlp()
    ddp = DistributedDataParallel(model)
    _steps(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05), rank, 0, 6)
    dense = _flat_params(model)
    model, ddp, opt = _updates("ef", efcomm.Identity(), every=1, outer_lr=1.0)
    _steps(ddp, opt, rank, 0, 6)
    every_step = _flat_params(model)

    local = _mlp()  # local SGD, parameters averaged by all_reduce every 3 steps
    local_opt = torch.optim.SGD(local.parameters(), lr=0.05)
    for step in range(6):
        _steps(local, local_opt, rank, step, step + 1)
        if (step + 1) % 3 == 0:
            with torch.no_grad():
                for p in local.parameters():
                    dist.all_reduce(p)
                    p.div_(world)
    model, ddp, opt = _updates("ef", efcomm.Identity(), every=3, outer_lr=1.0)
    _steps(ddp, opt, rank, 0, 6)
    return {
        "dense": dense,
        "every_step": every_step,
        "averaged": _flat_params(local),
        "every_3": _flat_params(model),
        "stats": opt.stats.state_dict(),
    }


def scenario_updates_adamw_topk(rank, world, ctx):
    """AdamW inside, EF + compact Top-10% of the change every 2 steps; and the same with
    DiLoCo's Nesterov outer step: the ranks' parameters after every exchange, the losses and
    the bytes."""
    out = {}
    for name, options in {"plain": {}, "nesterov": {"outer_lr": 0.7, "outer_momentum": 0.9}}.items():
        compressor = efcomm.TopK(0.1, value_dtype=torch.bfloat16, index_bits=16)
        model, ddp, opt = _updates("ef", compressor, torch.optim.AdamW, 1e-2, every=2, min_compress_numel=32, **options)
        losses = _steps(ddp, opt, rank, 0, 30)
        out[name] = {
            "ranks": _gathered(_flat_params(model)),
            "losses": losses,
            "stats": opt.stats.state_dict(),
            "steps": opt.steps,
        }
    return out


def scenario_updates_nonfinite(rank, world, ctx):
    """Rank 1's gradient inf at step 3 (plain step) and at step 8 (through GradScaler, which
    hands the verdict to step()): rank 1 skips its inner step, every rank still exchanges, and
    the ranks end identical and finite."""
    model, ddp, opt = _updates("ef", efcomm.TopK(0.2), every=2, min_compress_numel=32)
    _steps(ddp, opt, rank, 0, 6, corrupt=(3, 1))
    plain_skipped = opt.skipped_steps
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _steps(ddp, opt, rank, 6, 12, corrupt=(8, 1), scaler=scaler)
    return {
        "plain_skipped": plain_skipped,
        "skipped": opt.skipped_steps,
        "ranks": _gathered(_flat_params(model)),
        "exchanges": opt.stats.steps,
    }


def _resumable():
    return _updates("ef", efcomm.TopK(0.1), torch.optim.AdamW, 1e-2, every=4, min_compress_numel=32)


def scenario_updates_resume_save(rank, world, ctx):
    """The uninterrupted run (12 steps, an exchange every 4), and the same run saved at step 6,
    between two exchanges, to per-rank files."""
    model, ddp, opt = _resumable()
    _steps(ddp, opt, rank, 0, 12)
    uninterrupted = _flat_params(model)
    del model, ddp, opt
    gc.collect()
    model, ddp, opt = _resumable()
    _steps(ddp, opt, rank, 0, 6)
    torch.save(copy.deepcopy(opt.state_dict()), Path(ctx["directory"]) / f"updates.rank{rank}.pt")
    return {"uninterrupted": uninterrupted}


def scenario_updates_resume_load(rank, world, ctx):
    """In new processes: the saved run continues from step 6 (same world size: bit for bit) or
    at another world size (rank r reads saved rank r mod n; every rank restarts from the last
    exchange's parameters)."""
    saved = sorted(Path(ctx["directory"]).glob("updates.rank*.pt"))  # the "first" launch's ranks
    model, ddp, opt = _resumable()
    opt.load_state_dict(torch.load(Path(ctx["directory"]) / f"updates.rank{rank % len(saved)}.pt"))
    start = opt.steps
    at_load = _gathered(_flat_params(model))
    _steps(ddp, opt, rank, start, 12)
    return {"resumed": _flat_params(model), "at_load": at_load, "ranks": _gathered(_flat_params(model))}


def scenario_updates_mismatch(rank, world, ctx):
    """Rank 1 asks for another exchange interval: every rank raises, none hangs."""
    try:
        _updates("ef", efcomm.TopK(0.1), every=2 if rank == 0 else 3)
    except RuntimeError as e:
        return {"error": str(e)}
    return {"error": None}


SCENARIOS = {name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def cuda_updates_worker(rank, world_size, init_method, result_dir):
    """compress_updates on CUDA tensors (several ranks share cuda:0 over gloo): DDP's dense SGD
    against one exchange per step with Identity, and AdamW with EF + compact Top-10 % every 2
    steps (rank 1's gradient inf at step 3): the parameters of every rank."""
    from ddp_workers import _join_group, shutdown

    _join_group(rank, world_size, init_method)
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)

    def steps(model, opt, stop, corrupt=None):
        for step in range(stop):
            x, y = (t.to(device) for t in _batch(rank, step))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            (loss * float("inf") if corrupt == (step, rank) else loss).backward()
            opt.step()

    def make():
        model = _mlp().to(device)
        return model, DistributedDataParallel(model, device_ids=[0])

    model, ddp = make()
    steps(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05), 6)
    out = {"dense": _flat_params(model).cpu()}
    model, ddp = make()
    opt = efcomm.compress_updates(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05), "ef", efcomm.Identity(), every=1)
    steps(ddp, opt, 6)
    out["every_step"] = _flat_params(model).cpu()
    model, ddp = make()
    compressor = efcomm.TopK(0.1, value_dtype=torch.bfloat16, index_bits=16)
    opt = efcomm.compress_updates(
        ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-2), "ef", compressor, every=2, min_compress_numel=32
    )
    steps(ddp, opt, 10, corrupt=(3, 1))
    out |= {"topk": _flat_params(model).cpu(), "skipped": opt.skipped_steps}
    torch.save(out, Path(result_dir) / f"rank{rank}.pt")
    shutdown()
