"""The hook's CUDA path over real process groups (issue 12 item 5): on a machine with one GPU,
gloo carries CUDA tensors between ranks, so several ranks share cuda:0. Ranks bitwise
identical, exact resume, the non-finite reset, for EF21 with Top-k, Rand-k and Int8, each with
the encode on the bucket's stream and on a side stream (``side_stream=True``: the same bits);
and, over NCCL at world size 1, a steady-state step without a host synchronisation. Skipped
without CUDA."""

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import requires_cuda
from ddp_workers import _join_group, shutdown, spawn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import efcomm

COMPRESSORS = {"topk": efcomm.TopK(0.1), "randk": efcomm.RandK(0.1), "int8": efcomm.Int8()}


def _batch(rank, step, device):
    gen = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(8, 16, generator=gen).to(device), torch.randint(0, 4, (8,), generator=gen).to(device)


def cuda_hook_worker(rank, world_size, init_method, result_dir, name, side_stream):
    """Per compressor: 8 steps (rank 1's loss inf at step 4, skipped as GradScaler does), then a
    new DDP model and state load the checkpoint of step 5 and run steps 5 to 8 again."""
    _join_group(rank, world_size, init_method)
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
        ddp = DistributedDataParallel(model, device_ids=[0])
        state = efcomm.register(ddp, "ef21", COMPRESSORS[name], min_compress_numel=32, side_stream=side_stream)
        return model, ddp, state, torch.optim.SGD(ddp.parameters(), lr=0.05)

    def train(ddp, opt, model, start, stop):
        skipped = []
        for step in range(start, stop):
            x, y = _batch(rank, step, device)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ddp(x), y)
            if step == 4 and rank == 1:
                loss = loss * float("inf")
            loss.backward()
            if all(torch.isfinite(p.grad).all() for p in model.parameters()):
                opt.step()
            else:
                skipped.append(step)
        return skipped

    model, ddp, state, opt = make()
    skipped = train(ddp, opt, model, 0, 5)
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(), "ef_state": state.state_dict()})
    skipped += train(ddp, opt, model, 5, 8)
    out = {
        "params": torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]),
        "skipped": skipped,
        "resets": state.stats.nonfinite_resets,
    }
    model, ddp, state, opt = make()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    state.load_state_dict(saved["ef_state"])
    train(ddp, opt, model, 5, 8)
    out["resumed"] = torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])
    torch.save(out, Path(result_dir) / f"rank{rank}.pt")
    dist.barrier()
    shutdown()


@requires_cuda
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_cuda_hook_ranks_identical_resume_exact_and_nonfinite_reset(name, world):
    results = spawn(cuda_hook_worker, world, name, False)
    for r in results:
        assert torch.equal(r["params"], results[0]["params"])
        assert torch.equal(r["resumed"], r["params"])  # exact resume
        assert r["skipped"] == [4] and r["resets"] >= 1
    side = spawn(cuda_hook_worker, world, name, True)
    for r, s in zip(results, side):  # the side stream changes the order of launches, not the bits
        assert torch.equal(s["params"], r["params"]) and torch.equal(s["resumed"], r["params"])
        assert s["skipped"] == [4] and s["resets"] == r["resets"]


def nccl_steady_state_worker(rank, world_size, init_method, result_dir, name, side_stream):
    """NCCL at world size 1 (the GPU machine has one GPU): three steps, then one under
    torch.cuda.set_sync_debug_mode("error")."""
    torch.cuda.set_device(0)
    dist.init_process_group(
        "nccl", init_method=init_method, rank=rank, world_size=world_size, device_id=torch.device("cuda", 0)
    )
    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[0])
    efcomm.register(ddp, "ef21", COMPRESSORS[name], min_compress_numel=32, side_stream=side_stream)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)

    def step(i):
        x, y = _batch(rank, i, device)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(3)
        out = {"sync_error": None}
    except RuntimeError as e:
        out = {"sync_error": str(e)}
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    torch.save(out, Path(result_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@requires_cuda
@pytest.mark.parametrize("side_stream", [False, True])
@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_cuda_hook_steady_state_step_has_no_host_sync(name, side_stream, monkeypatch):
    """Top-k with the sync-free select (EFCOMM_TOPK_SELECT=radix2; the default select reads a
    count on the host, see test_cuda_sync_free.py)."""
    monkeypatch.setenv("EFCOMM_TOPK_SELECT", "radix2")  # the spawned process inherits it
    (result,) = spawn(nccl_steady_state_worker, 1, name, side_stream)
    assert result["sync_error"] is None, result["sync_error"]
