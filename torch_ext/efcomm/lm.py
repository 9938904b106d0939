"""A small language model on real text, for the demo and benchmarks/convergence.py.

The corpus is one that every machine has: by default the Python standard library's own
top-level source files (``*.py`` directly in ``sysconfig.get_paths()["stdlib"]``: no
site-packages, no test/), or every text file under a folder; split into training and
validation by file (a file is in validation when the SHA-256 of its relative path ends in a
byte below 26: about 10 %), tokenised as bytes. Its size and hash go with every result: the
standard library differs between Python versions, and so do the losses.

The model is a byte-level causal transformer of ``torch.nn`` blocks; every run starts from the
same initial model (seeded), sees the same batches in the same order (windows drawn from
(seed, step) alone) and steps with AdamW (betas 0.9/0.95, weight decay 0.1; or plain SGD for
methods that keep their own momentum) under a linear warm-up (5 % of the steps) and a cosine
decay to 10 % of the peak learning rate.
"""

import hashlib
import math
import socket
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm


@dataclass(frozen=True)
class LMConfig:
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64
    batch: int = 8  # sequences per rank and step
    steps: int = 1000
    seed: int = 0
    optimizer: str = "adamw"  # or "sgd" (no momentum)
    lr: float = 3e-3  # the peak learning rate
    val_every: int = 50
    val_windows: int = 256
    bucket_cap_mb: Optional[float] = None  # DDP's (None: its default, one bucket for this model)


TINY = dict(d_model=16, layers=1, heads=2, context=16, batch=2, val_windows=8, val_every=4)


# ---- the corpus ----------------------------------------------------------------------------


def corpus_files(corpus: Optional[str]) -> tuple[Path, list[Path]]:
    """The corpus's folder and its files, sorted by relative path (default: the stdlib's *.py)."""
    if corpus is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [p for p in root.glob("*.py") if p.is_file()]
    else:
        root = Path(corpus)
        if not root.is_dir():
            raise ValueError(f"efcomm.lm: corpus ({corpus!r}) is not a folder")
        files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return root, sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_corpus(corpus: Optional[str] = None, max_bytes: int = 64 * 2**20) -> dict:
    """Training and validation bytes (uint8 tensors), split by file, with the corpus's folder,
    file count, size and SHA-256. Files that are not text (a NUL byte, or not UTF-8) are skipped;
    files past ``max_bytes`` in all are left out."""
    root, files = corpus_files(corpus)
    train, val, digest, used = [], [], hashlib.sha256(), 0
    for path in files:
        data = path.read_bytes()
        if not data or b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if used + len(data) > max_bytes:
            break
        used += len(data)
        name = path.relative_to(root).as_posix()
        digest.update(name.encode() + b"\0" + data)
        (val if hashlib.sha256(name.encode()).digest()[-1] < 26 else train).append(data)
    if not train or not val:
        raise ValueError(f"efcomm.lm: the corpus in {root} has too few text files to split ({len(train + val)})")
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"\n".join(parts)), dtype=torch.uint8)
    return {
        "root": str(root),
        "files": len(train) + len(val),
        "bytes": used,
        "sha256": digest.hexdigest(),
        "train": as_tensor(train),
        "val": as_tensor(val),
    }


def describe(corpus: dict) -> str:
    return (
        f"{corpus['root']}: {corpus['files']} files, {corpus['bytes']:,} bytes, sha256 {corpus['sha256'][:16]}; "
        f"train {corpus['train'].numel():,} / validation {corpus['val'].numel():,} bytes"
    )


# ---- the model and the data order ------------------------------------------------------------


class ByteGPT(nn.Module):
    """A byte-level causal transformer of torch.nn blocks (pre-norm, GELU), tied output head."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.embed = nn.Embedding(256, cfg.d_model)
        self.position = nn.Parameter(torch.randn(cfg.context, cfg.d_model) * 0.02)
        block = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, 4 * cfg.d_model, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(cfg.context), persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.embed(tokens) + self.position[:t]
        x = self.blocks(x, mask=self.mask[:t, :t], is_causal=True)
        return self.norm(x) @ self.embed.weight.t()


def batch_windows(data: torch.Tensor, cfg: LMConfig, step: int, rank: int, world: int):
    """This rank's slice of the step's global batch: windows drawn from (seed, step) alone, so
    that every run sees the same data in the same order."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    starts = torch.randint(0, data.numel() - cfg.context - 1, (world * cfg.batch,), generator=gen)
    starts = starts[rank * cfg.batch : (rank + 1) * cfg.batch]
    rows = torch.stack([data[s : s + cfg.context + 1] for s in starts.tolist()]).long()
    return rows[:, :-1], rows[:, 1:]


def val_windows(data: torch.Tensor, cfg: LMConfig):
    """Fixed validation windows, evenly spaced over the validation bytes."""
    stride = max(1, (data.numel() - cfg.context - 1) // cfg.val_windows)
    rows = torch.stack([data[i * stride : i * stride + cfg.context + 1] for i in range(cfg.val_windows)]).long()
    return rows[:, :-1], rows[:, 1:]


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to 10 % of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- one run on one rank ----------------------------------------------------------------------


def free_init_method() -> str:
    """A TCP rendezvous on a free local port, for ranks spawned on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def init_rank(rank: int, world: int, backend: str, init_method: str) -> torch.device:
    """Joins the process group as ``rank`` (one CPU thread; NCCL: one GPU per rank) and returns
    the rank's device."""
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return device


def train(
    cfg: LMConfig,
    corpus: dict,
    install: Callable[[DistributedDataParallel], Callable[[], int]],
    device: torch.device,
    desc: str = "",
    progress: bool = True,
    wrap: Optional[Callable[[DistributedDataParallel, torch.optim.Optimizer], torch.optim.Optimizer]] = None,
) -> dict:
    """Trains a fresh model on this rank (the process group is initialised) and returns its
    run: the validation curve ([step, loss] pairs, on rank 0; empty elsewhere), this rank's
    bytes per step and the wall time. ``install(ddp)`` registers the run's hook (or none) and
    returns a function that gives the bytes this rank sent in the step that just ended;
    ``wrap(ddp, optimizer)``, when given, returns the optimizer to train with (e.g.
    efcomm.compress_updates; it is called after ``install``). Validation runs on rank 0's
    model: with local steps, ``val_every`` should be a multiple of the exchange interval."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)
    model = ByteGPT(cfg).to(device)
    buckets = {} if cfg.bucket_cap_mb is None else {"bucket_cap_mb": cfg.bucket_cap_mb}
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **buckets)
    step_bytes = install(ddp)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    elif cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    else:
        raise ValueError(f"efcomm.lm: optimizer ({cfg.optimizer!r}) must be 'adamw' or 'sgd'")
    if wrap is not None:
        optimizer = wrap(ddp, optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.steps))
    val_x, val_y = (t.to(device) for t in val_windows(corpus["val"], cfg))
    loss_fn = nn.CrossEntropyLoss()

    def validate() -> float:
        with torch.no_grad():
            return loss_fn(model(val_x).flatten(0, 1), val_y.flatten()).item()

    curve = [[0, validate()]] if rank == 0 else []
    sent = []
    bar = tqdm(total=cfg.steps, desc=desc, disable=rank != 0 or not progress, leave=False)
    start = time.perf_counter()
    for step in range(cfg.steps):
        x, y = (t.to(device) for t in batch_windows(corpus["train"], cfg, step, rank, world))
        optimizer.zero_grad(set_to_none=True)
        loss_fn(ddp(x).flatten(0, 1), y.flatten()).backward()
        optimizer.step()
        schedule.step()
        sent.append(step_bytes())
        if rank == 0 and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            curve.append([step + 1, validate()])
            bar.set_postfix(val=f"{curve[-1][1]:.4f}")
        bar.update()
    bar.close()
    dense = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "val_curve": curve,
        "final_val_loss": curve[-1][1] if curve else None,
        "bytes_per_step": sent,
        "bytes_per_rank_per_step": sum(sent) / cfg.steps,
        "dense_bytes_per_rank_per_step": float(dense),
        "wall_s": time.perf_counter() - start,
    }
