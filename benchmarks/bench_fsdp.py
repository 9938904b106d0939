"""FSDP2 step benchmark: FSDP's own exchange, native HSDP, and efcomm's, on one transformer.

    python benchmarks/bench_fsdp.py --tiny                        # CPU, gloo, 2 replicas x 2 shards
    python benchmarks/bench_fsdp.py --replicas 2 --shards 4 --dim 1024 --blocks 8   # GPUs (nccl)

The ranks are laid out as a (replicas, shards) mesh, rank = replica * shards + shard (torchrun's
layout: a replica is a node). Each exchange gets a fresh transformer (embedding, pre-norm
attention + MLP blocks, each block its own ``fully_shard`` unit, the root holding the embedding
and the head) and an SGD optimizer:

  fsdp          fully_shard over every rank (1-D mesh): one reduce-scatter over the world;
  hsdp          native HSDP (2-D mesh): the reduce-scatter in the replica, then the all-reduce
                of each shard among the replicas;
  efcomm-hsdp   sharded in the replica (1-D mesh) with efcomm.register_fsdp(replicate_group=...):
                the shard's exchange among replicas is EF21 + Top-1% (bf16 values, 16-bit offsets);
  efcomm-rs     fully_shard over every rank with efcomm.register_fsdp() (no replicate group):
                the reduce-scatter itself compressed (none + QSGD, stateless, unbiased).

After --warmup steps (efcomm's dense start among them) it times --steps optimizer steps on the
wall clock (device synchronized; the slowest rank's time of each step) and prints the median
step time, and the bytes per step this rank sends between replicas (efcomm: its stats; native
HSDP: its shards in the reduce dtype). Then the wire model (efcomm.wire_model.hsdp_rows):
predicted step times of native HSDP and efcomm over HSDP at 8 x 8 and 64 x 8 GPUs from this
run's measured step (the compute) and efcomm's overhead over native HSDP. Results go to
<out>/bench_fsdp.json.
"""

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_hooks import positive_int  # noqa: E402

import efcomm  # noqa: E402
from efcomm import wire_model  # noqa: E402

EXCHANGES = ("fsdp", "hsdp", "efcomm-hsdp", "efcomm-rs")
TOP1 = dict(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, vocab: int, dim: int, blocks: int, heads: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a small model and few steps (CPU, CI)")
    parser.add_argument("--replicas", type=positive_int, default=2)
    parser.add_argument("--shards", type=positive_int, default=2)
    parser.add_argument("--exchanges", nargs="+", choices=EXCHANGES, default=list(EXCHANGES))
    parser.add_argument("--dim", type=positive_int, default=None, help="model width (default 64 tiny, 1024)")
    parser.add_argument("--blocks", type=positive_int, default=None, help="blocks (default 2 tiny, 8)")
    parser.add_argument("--seq", type=positive_int, default=None, help="tokens per sample (default 16 tiny, 1024)")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--warmup", type=positive_int, default=None, help="default 3 tiny, 5")
    parser.add_argument("--steps", type=positive_int, default=None, help="default 8 tiny, 30")
    parser.add_argument("--out", default="benchmarks/results", help="folder for bench_fsdp.json")
    args = parser.parse_args(argv)
    tiny = {"dim": 64, "blocks": 2, "seq": 16, "warmup": 3, "steps": 8}
    full = {"dim": 1024, "blocks": 8, "seq": 1024, "warmup": 5, "steps": 30}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.replicas < 2 and any(e.startswith("efcomm-hsdp") or e == "hsdp" for e in args.exchanges):
        parser.error(f"argument --replicas ({args.replicas}): HSDP needs at least 2 replicas")
    return args


def build(exchange: str, mesh, args, device):
    """The model of ``exchange``, sharded, with efcomm registered where it takes part, and its state."""
    model = Transformer(256, args.dim, args.blocks, max(1, args.dim // 64)).to(device)
    unit_mesh = {"fsdp": mesh["world"], "hsdp": mesh["hsdp"], "efcomm-hsdp": mesh["hsdp"]["shard"]}.get(
        exchange, mesh["world"]
    )
    for block in model.blocks:
        fully_shard(block, mesh=unit_mesh)
    fully_shard(model, mesh=unit_mesh)
    state = None
    if exchange == "efcomm-hsdp":
        replicate = mesh["hsdp"]["replicate"].get_group()
        state = efcomm.register_fsdp(model, "ef21", efcomm.TopK(**TOP1), replicate_group=replicate)
    elif exchange == "efcomm-rs":
        state = efcomm.register_fsdp(model, "none", efcomm.QSGD(levels=127))
    return model, state


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(exchange: str, mesh, args, device) -> dict:
    model, state = build(exchange, mesh, args, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(dist.get_rank())
    shard_bytes = sum(p.to_local().numel() * p.to_local().element_size() for p in model.parameters())
    times, inter = [], []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, 256, (args.batch, args.seq + 1), generator=gen, device=device)
        synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        logits = model(tokens[:, :-1])
        nn.functional.cross_entropy(logits.reshape(-1, 256).float(), tokens[:, 1:].reshape(-1)).backward()
        optimizer.step()
        synchronize(device)
        elapsed = torch.tensor(time.perf_counter() - start)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if step >= args.warmup:
            times.append(float(elapsed))
            inter.append(state.stats.inter_node_bytes if state is not None else None)
    if exchange == "hsdp":
        between = shard_bytes  # the all-reduce's payload: this rank's shards
    elif exchange == "efcomm-hsdp":
        between = (inter[-1] - inter[0]) / (len(inter) - 1) if len(inter) > 1 else float("nan")
    else:
        between = 0  # one mesh: no exchange between replicas
    return {
        "exchange": exchange,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "between_replicas_bytes_per_step": between,
        "shard_bytes": shard_bytes,
    }


def run_rank(rank: int, world: int, init_method: str, args) -> None:
    if args.device == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    mesh = {
        "world": init_device_mesh(args.device, (world,)),
        "hsdp": init_device_mesh(args.device, (args.replicas, args.shards), mesh_dim_names=("replicate", "shard")),
    }
    results = [bench(exchange, mesh, args, device) for exchange in args.exchanges]
    if rank == 0:
        report(results, args, world)
    dist.barrier()
    dist.destroy_process_group()


def report(results: list, args, world: int) -> None:
    parameters = sum(p.numel() for p in Transformer(256, args.dim, args.blocks, max(1, args.dim // 64)).parameters())
    print(
        f"bench_fsdp: {args.device}, {args.replicas} replicas x {args.shards} shards, transformer dim {args.dim}, "
        f"{args.blocks} blocks, {parameters / 1e6:.2f}M parameters; {args.warmup} warm-up + {args.steps} steps"
    )
    print(f"{'exchange':<14}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'between replicas B/step':>26}")
    for r in results:
        print(
            f"{r['exchange']:<14}{r['median_s'] * 1e3:>11.1f}{r['min_s'] * 1e3:>9.1f}{r['max_s'] * 1e3:>9.1f}"
            f"{r['between_replicas_bytes_per_step']:>26,.0f}"
        )
    by_name = {r["exchange"]: r for r in results}
    text = ""
    if "hsdp" in by_name and "efcomm-hsdp" in by_name:
        compute = by_name["hsdp"]["median_s"]
        overhead = max(0.0, by_name["efcomm-hsdp"]["median_s"] - compute)
        unit_numels = _unit_numels(args)
        compressor = efcomm.TopK(**TOP1)

        def message_nbytes(fraction):
            return sum(compressor.message_nbytes(max(1, math.ceil(fraction * n)), torch.float32) for n in unit_numels)

        table = wire_model.hsdp_rows(4 * parameters, message_nbytes, compute, overhead)
        text = wire_model.format_hierarchy(
            f"\nwire model: this transformer ({parameters / 1e6:.2f}M float32 parameters, {len(unit_numels)} units) "
            f"at nodes x GPUs, compute = the measured native HSDP step ({compute * 1e3:.1f} ms), efcomm overhead "
            f"{overhead * 1e3:.1f} ms: predicted step time (no overlap)",
            table,
            baseline="hsdp",
        )
        print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_fsdp.json").write_text(
        json.dumps({"args": vars(args), "parameters": parameters, "results": results}, indent=1)
    )


def _unit_numels(args) -> list:
    """The parameters of each FSDP unit: every block, and the root (embedding, final norm, head)."""
    model = Transformer(256, args.dim, args.blocks, max(1, args.dim // 64))
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    return blocks + [sum(p.numel() for p in model.parameters()) - sum(blocks)]


def _spawned_rank(rank: int, world: int, init_method: str, args) -> None:
    run_rank(rank, world, init_method, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as bench_ddp.py: no interpreter finalization with gloo's threads alive


def main(argv=None) -> None:
    args = parse_args(argv)
    world = args.replicas * args.shards
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init_method = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    mp.spawn(_spawned_rank, args=(world, init_method, args), nprocs=world, join=True)


if __name__ == "__main__":
    main()
