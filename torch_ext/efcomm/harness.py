"""The training harness of the demo and of the multi-process tests: a small MLP trained
with DDP on generated data (a random teacher network labels Gaussian inputs: nothing is
downloaded), with DDP's all-reduce or an efcomm method, over gloo on the CPU or NCCL on GPUs.

    results = run(TrainConfig(method="ef21", steps=300), world_size=4)   # one dict per rank
"""

import gc
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .compressors import TopK
from .hook import register

INPUT_DIM = 32
CLASSES = 10


@dataclass(frozen=True)
class TrainConfig:
    method: Any = "dense"  # "dense" (DDP's own all-reduce), or an efcomm method name or Method
    ratio: float = 0.01
    compressor: Any = None  # an efcomm compressor; None: TopK(ratio)
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    backend: str = "gloo"
    bucket_cap_mb: float = 25.0
    gradient_as_bucket_view: bool = False
    min_compress_numel: int = 1024
    progress: bool = False
    checkpoint_in: Optional[str] = None  # resume from <checkpoint_in>.rank<r>.pt
    checkpoint_out: Optional[str] = None  # save to <checkpoint_out>.rank<r>.pt at the end


def make_dataset(seed: int, n_train: int = 8192, n_test: int = 2048):
    """Gaussian inputs labelled by a fixed random two-layer teacher network."""
    gen = torch.Generator().manual_seed(seed + 1000)
    w1 = torch.randn(INPUT_DIM, 64, generator=gen)
    w2 = torch.randn(64, CLASSES, generator=gen)
    x = torch.randn(n_train + n_test, INPUT_DIM, generator=gen)
    y = (torch.tanh(x @ w1 / INPUT_DIM**0.5) @ w2).argmax(dim=1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(INPUT_DIM, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES))


def _batch(shard_x, shard_y, step: int, batch_size: int):
    """The batch of a step: a fixed function of the step, so a resumed run sees the same data."""
    rows = (torch.arange(batch_size) + step * batch_size) % shard_x.shape[0]
    return shard_x[rows], shard_y[rows]


def train_worker(rank: int, world_size: int, init_method: str, cfg: TrainConfig, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(cfg.backend, init_method=init_method, rank=rank, world_size=world_size)
    try:
        _train(rank, world_size, cfg, result_dir)
        # The model, its DDP wrapper and the hook state are gone with _train's frame: the
        # process group dies in destroy_process_group, not at interpreter exit, where gloo's
        # threads may still hold work objects that need the GIL (pytorch/pytorch#179291).
        gc.collect()
        dist.barrier()  # no rank leaves while a peer still talks to it (gloo aborts otherwise)
    finally:
        dist.destroy_process_group()


def _train(rank: int, world_size: int, cfg: TrainConfig, result_dir: str) -> None:
    """One rank's run: trains, then writes its result (and checkpoint) files."""
    device = torch.device("cuda", rank) if cfg.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    (train_x, train_y), (test_x, test_y) = make_dataset(cfg.seed)
    shard_x, shard_y = train_x[rank::world_size].to(device), train_y[rank::world_size].to(device)

    model = make_model(cfg.seed).to(device)
    ddp = DistributedDataParallel(
        model,
        device_ids=[rank] if device.type == "cuda" else None,
        bucket_cap_mb=cfg.bucket_cap_mb,
        gradient_as_bucket_view=cfg.gradient_as_bucket_view,
    )
    optimizer = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    ef_state = None
    if cfg.method != "dense":
        # "none" with Top-k is biased: allowed here so that its behaviour can be shown.
        compressor = cfg.compressor if cfg.compressor is not None else TopK(cfg.ratio)
        ef_state = register(
            ddp,
            cfg.method,
            compressor,
            min_compress_numel=cfg.min_compress_numel,
            seed=cfg.seed,
            allow_biased=getattr(cfg.method, "name", cfg.method) == "none",
        )

    start = 0
    if cfg.checkpoint_in:
        ckpt = torch.load(f"{cfg.checkpoint_in}.rank{rank}.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ef_state is not None:
            ef_state.load_state_dict(ckpt["ef_state"])
        start = ckpt["step"]

    loss_fn = nn.CrossEntropyLoss()
    steps = range(start, start + cfg.steps)
    for step in tqdm(
        steps, desc=f"{getattr(cfg.method, 'name', cfg.method):>5}", disable=not (cfg.progress and rank == 0)
    ):
        xb, yb = _batch(shard_x, shard_y, step, cfg.batch_size)
        optimizer.zero_grad()
        loss_fn(ddp(xb), yb).backward()
        optimizer.step()

    with torch.no_grad():
        train_loss = loss_fn(model(train_x.to(device)), train_y.to(device)).item()
        accuracy = (model(test_x.to(device)).argmax(dim=1) == test_y.to(device)).float().mean().item()
    dense_bytes = ef_state.stats.dense_bytes if ef_state else None
    result = {
        "rank": rank,
        "train_loss": train_loss,
        "test_accuracy": accuracy,
        "bytes_sent": ef_state.stats.bytes_sent if ef_state else None,
        "dense_bytes": dense_bytes,
        "params": torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]),
        "ef_state": ef_state.state_dict() if ef_state else None,
    }
    torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    if cfg.checkpoint_out:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ef_state": ef_state.state_dict() if ef_state else None,
                "step": start + cfg.steps,
            },
            f"{cfg.checkpoint_out}.rank{rank}.pt",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cfg: TrainConfig, world_size: int) -> list[dict]:
    """Spawns ``world_size`` ranks that train with ``cfg``; returns each rank's result."""
    with tempfile.TemporaryDirectory() as result_dir:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(train_worker, args=(world_size, init_method, cfg, result_dir), nprocs=world_size, join=True)
        return [torch.load(Path(result_dir) / f"rank{r}.pt") for r in range(world_size)]
