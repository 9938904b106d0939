"""End-to-end DDP step benchmark: the cost of each gradient-communication hook in a training step.

    python benchmarks/bench_ddp.py                      # GPU if there is one: GPT-2 and ResNet-50, every hook
    python benchmarks/bench_ddp.py --device cpu --tiny  # small built-in models, a functional run (CI)
    python benchmarks/bench_ddp.py --hooks allreduce ef21:topk:0.01 powersgd:4 --models gpt2 --world-size 2

Models (benchmarks/ddp_models.py): GPT-2 small (transformers' GPT2LMHeadModel(GPT2Config()),
8x1024 tokens) and ResNet-50 (torchvision, batch 128 at 224x224), bf16 autocast on CUDA, when
those packages are installed; small built-in models otherwise and with --tiny. Hooks
(benchmarks/ddp_hooks.py): DDP's all-reduce (the baseline, always run first), torch's fp16 and
bf16 hooks, PowerSGD, and efcomm configurations as METHOD:COMPRESSOR[:RATIO][:FLAG].

Each hook gets a fresh copy of the model, DDP and an SGD optimizer (momentum 0.9); after
--warmup steps (which hold DDP's bucket rebuild, efcomm's dense first exchange and PowerSGD's
two uncompressed steps) it times --steps optimizer steps (zero_grad, forward, backward with the
hook's communication, SGD step), each on the wall clock with the device synchronized before
and after (with several ranks, the slowest rank's time of each step). Per hook it prints:
  - the median step time and its spread (first to third quartile, min to max);
  - the overhead: the median against the all-reduce median, measured in the same run;
  - bytes per step: this rank's payload handed to the collectives in one step (efcomm: from
    ``state.stats``; the others computed from the bucket sizes as ddp_hooks.py describes), and
    its fraction of the dense gradient's bytes;
  - host syncs per step (CUDA): warnings of ``torch.cuda.set_sync_debug_mode("warn")`` inside
    the measured steps (the timing's own synchronizations are outside), per step; "n/a" on CPU.
Then the wire model's tables (efcomm.wire_model: predicted step times at world sizes 8, 64 and
512 on four links, and the break-even bandwidths). Results go to <out>/bench_ddp.json and a
plot to <out>/bench_ddp.png.
"""

import argparse
import copy
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ddp_hooks import DEFAULT_HOOKS, ByteMeter, parse_hook, positive_float, positive_int
from ddp_models import MODELS, make_workload
from efcomm import wire_model

TINY = {"warmup": 3, "steps": 8, "bucket_cap_mb": 0.05}
FULL = {"warmup": 5, "steps": 30, "bucket_cap_mb": 25.0}  # DDP's default bucket size
LEGEND = (
    "step time: median and spread (q1-q3, min-max) of the measured steps; vs allreduce: median against "
    "DDP's all-reduce median (the baseline);\nMB/step: this rank's payload per step (of dense: its fraction "
    "of the gradient's bytes); syncs/step: set_sync_debug_mode warnings per measured step (CUDA)"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--tiny", action="store_true", help="small built-in models and few steps (a CPU functional run)"
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--hooks",
        nargs="+",
        type=parse_hook,
        default=None,
        help=f"hooks to compare (default: {' '.join(DEFAULT_HOOKS)}); see benchmarks/ddp_hooks.py",
    )
    parser.add_argument(
        "--warmup",
        type=positive_int,
        default=None,
        help=f"untimed steps per hook, at least 2 (default {FULL['warmup']}; --tiny {TINY['warmup']})",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"measured steps per hook (default {FULL['steps']}; --tiny {TINY['steps']})",
    )
    parser.add_argument("--world-size", type=positive_int, default=1, help="ranks to spawn (default 1: one process)")
    parser.add_argument("--backend", choices=["nccl", "gloo"], default=None, help="default: nccl on cuda, gloo on cpu")
    parser.add_argument(
        "--bucket-cap-mb",
        type=positive_float,
        default=None,
        help=f"DDP's bucket_cap_mb (default {FULL['bucket_cap_mb']:g}; --tiny {TINY['bucket_cap_mb']:g})",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="sequences or images per rank (default: the model's)"
    )
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for bench_ddp.json and bench_ddp.png")
    args = parser.parse_args(argv)

    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 2:
        parser.error(
            f"argument --warmup: {args.warmup} is too few: DDP rebuilds its buckets after step 1 and "
            "PowerSGD compresses from step 2, so at least 2 warm-up steps are needed"
        )
    hooks = args.hooks or [parse_hook(h) for h in DEFAULT_HOOKS]
    names = [h.name for h in hooks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        parser.error(f"argument --hooks: {repeated} given more than once")
    if "allreduce" not in names:
        hooks.insert(0, parse_hook("allreduce"))  # the baseline every overhead is measured against
    args.hooks = sorted(hooks, key=lambda h: h.name != "allreduce")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: 'cuda' was asked for but torch.cuda.is_available() is False")
    args.backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    if args.backend == "nccl" and args.device != "cuda":
        parser.error("argument --backend: 'nccl' needs --device cuda")
    if args.backend == "nccl" and args.world_size > torch.cuda.device_count():
        parser.error(
            f"argument --world-size: {args.world_size} ranks need {args.world_size} GPUs with nccl "
            f"({torch.cuda.device_count()} here); use --backend gloo to share one"
        )
    return args


def train_step(ddp, optimizer, workload, batch, autocast: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = workload.loss(ddp, batch)
    loss.backward()
    optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up_process(workload, args, device: torch.device) -> None:
    """--warmup plain steps (no DDP) on a copy of the model, so that the process's first-call
    costs (kernel selection, cuDNN autotuning, allocator growth) do not fall on the first hook,
    the all-reduce baseline."""
    model = copy.deepcopy(workload.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    for i in range(args.warmup):
        train_step(model, optimizer, workload, workload.batches[i % len(workload.batches)], device.type == "cuda")
    synchronize(device)


def bench_hook(workload, spec, args, device: torch.device) -> dict:
    """Times one hook on a fresh copy of the workload's model; the step times of this rank."""
    model = copy.deepcopy(workload.model)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=args.bucket_cap_mb
    )
    meter = ByteMeter(spec, ddp)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    autocast = device.type == "cuda"
    batches = workload.batches
    for i in range(args.warmup):
        train_step(ddp, optimizer, workload, batches[i % len(batches)], autocast)
    meter.start()
    times = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(args.steps):
            synchronize(device)
            start = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            train_step(ddp, optimizer, workload, batches[i % len(batches)], autocast)
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            synchronize(device)
            times.append(time.perf_counter() - start)
        syncs = sum("synchronizing CUDA operation" in str(w.message) for w in caught)
    return {
        "name": spec.name,
        "label": spec.label(),
        "note": meter.note,
        "kind": spec.kind,
        "collective": spec.collective,
        "buckets": bucket_count(ddp),
        "dense_bytes": meter.dense_bytes,
        "bytes_per_step": meter.bytes_per_step(args.steps),
        "syncs_per_step": syncs / args.steps if device.type == "cuda" else None,
        "times": times,
    }


def bucket_count(ddp: DistributedDataParallel) -> int:
    """The number of DDP's gradient buckets (after its rebuild), from DDP's logging data."""
    data = ddp._get_ddp_logging_data()
    sizes = data.get("rebuilt_bucket_sizes") or data["bucket_sizes"]
    return len(sizes.split(","))


def summarize(result: dict, world: int) -> dict:
    """Adds the step-time statistics (of each step's slowest rank) to one hook's result."""
    per_rank = [None] * world
    dist.all_gather_object(per_rank, result.pop("times"))
    times = [max(step) for step in zip(*per_rank)]
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    result.update(
        median_s=median,
        q1_s=q1,
        q3_s=q3,
        min_s=min(times),
        max_s=max(times),
        step_times_s=times,
        dense_fraction=result["bytes_per_step"] / result["dense_bytes"],
    )
    return result


def format_model(model: dict) -> str:
    """The per-hook table of one model."""
    base = model["hooks"][0]["median_s"]
    header = ["hook", "median ms", "q1-q3 ms", "min-max ms", "vs allreduce", "MB/step", "of dense", "syncs/step"]
    rows = [
        [
            h["name"],
            f"{h['median_s'] * 1e3:.2f}",
            f"{h['q1_s'] * 1e3:.2f}-{h['q3_s'] * 1e3:.2f}",
            f"{h['min_s'] * 1e3:.2f}-{h['max_s'] * 1e3:.2f}",
            "baseline" if h["name"] == "allreduce" else f"{h['median_s'] / base - 1:+.1%}",
            f"{h['bytes_per_step'] / 1e6:.3f}",
            f"{h['dense_fraction']:.2%}",
            "n/a" if h["syncs_per_step"] is None else f"{h['syncs_per_step']:.1f}",
        ]
        for h in model["hooks"]
    ]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = [
        row[0].ljust(widths[0]) + "".join(cell.rjust(w + 2) for cell, w in zip(row[1:], widths[1:]))
        for row in [header] + rows
    ]
    lines += [f"  {h['name']}: {h['note']}" for h in model["hooks"] if h["note"]]
    return "\n".join(lines)


def run_rank(rank: int, world: int, init_method: str, args: argparse.Namespace) -> None:
    """The benchmark on one rank; rank 0 prints and writes the results."""
    if args.device == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        # --tiny's ops are too small to gain from intra-op threads, and on a shared CPU their
        # barriers made steps up to 40x slower and erratic: one thread per rank there.
        torch.set_num_threads(1 if args.tiny else max(1, (os.cpu_count() or 1) // world))
    if init_method:
        dist.init_process_group(args.backend, init_method=init_method, rank=rank, world_size=world)
    else:  # one process: no rendezvous over the network
        dist.init_process_group(args.backend, store=dist.HashStore(), rank=0, world_size=1)
    start = time.perf_counter()
    if rank == 0:
        print(
            f"bench_ddp: {device_name(device)}, {args.backend}, world size {world}, {args.warmup} warm-up + "
            f"{args.steps} measured steps per hook, commit {_commit()}\n{LEGEND}",
            flush=True,
        )
    models = []
    for name in args.models:
        workload = make_workload(name, device, args.tiny, args.batch_size or 0)
        params = sum(p.numel() for p in workload.model.parameters())
        warm_up_process(workload, args, device)
        hooks = [summarize(bench_hook(workload, spec, args, device), world) for spec in args.hooks]
        models.append(
            {
                "name": name,
                "description": workload.description,
                "parameters": params,
                "dense_bytes": hooks[0]["dense_bytes"],
                "buckets": hooks[0]["buckets"],
                "hooks": hooks,
            }
        )
        del workload
        if rank == 0:
            print(
                f"\n{name}: {models[-1]['description']}; {params / 1e6:.2f}M parameters, "
                f"gradient {hooks[0]['dense_bytes'] / 1e6:.2f} MB, DDP buckets {hooks[0]['buckets']}",
                flush=True,
            )
            print(format_model(models[-1]), flush=True)
    if rank == 0:
        report(models, args, device, world, time.perf_counter() - start)
    dist.barrier()
    dist.destroy_process_group()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _commit() -> str:
    """The checkout's commit ("-dirty" with local changes), or "unknown" outside a git checkout."""
    if shutil.which("git") is None:
        return "unknown"
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def report(models: list, args, device: torch.device, world: int, seconds: float) -> None:
    """Prints the wire model and writes the JSON and the plot."""
    name = device_name(device)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "device": name,
        "torch": torch.__version__,
        "world_size": world,
        "backend": args.backend,
        "autocast": "bfloat16" if device.type == "cuda" else None,
        "warmup": args.warmup,
        "steps": args.steps,
        "bucket_cap_mb": args.bucket_cap_mb,
        "tiny": args.tiny,
        "models": models,
    }
    text, rows = wire_model.report(results)
    results["wire_model"] = {
        "assumptions": "ring collectives, no overlap, bandwidth only (no latency term); see efcomm.wire_model",
        "rows": rows,
    }
    print(f"\n{text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ddp.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "bench_ddp.png")
    print(f"wrote {out / 'bench_ddp.json'} and {out / 'bench_ddp.png'}; {seconds:.1f} s from the group's start")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        hooks = model["hooks"]
        x = range(len(hooks))
        medians = [h["median_s"] * 1e3 for h in hooks]
        spread = [
            [(h["median_s"] - h["q1_s"]) * 1e3 for h in hooks],
            [(h["q3_s"] - h["median_s"]) * 1e3 for h in hooks],
        ]
        top, bottom = axes[0][column], axes[1][column]
        top.bar(x, medians, yerr=spread, capsize=3, color="tab:blue")
        top.axhline(medians[0], color="black", linestyle="--", linewidth=1, label="DDP all-reduce")
        top.set_ylabel("median step time, ms (q1-q3)")
        top.set_title(f"{model['name']} on {results['device']}, world size {results['world_size']}")
        top.legend()
        bottom.bar(x, [h["bytes_per_step"] / 1e6 for h in hooks], color="tab:orange")
        bottom.set_yscale("log")
        bottom.set_ylabel("MB sent per step and rank")
        for ax in (top, bottom):
            ax.set_xticks(list(x), [h["name"] for h in hooks], rotation=45, ha="right", fontsize=8)
    fig.suptitle(
        f"bench_ddp: {results['backend']}, {results['warmup']} warm-up + {results['steps']} measured steps, "
        f"commit {results['commit']}, {results['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spawned_rank(rank: int, world: int, init_method: str, args: argparse.Namespace) -> None:
    run_rank(rank, world, init_method, args)
    # Leave without interpreter finalization: gloo's threads may still hold work objects whose
    # tensors need the GIL then, which aborts the process now and then (as tests/python/ddp_workers.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.world_size == 1:
        run_rank(0, 1, "", args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init_method = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    mp.spawn(_spawned_rank, args=(args.world_size, init_method, args), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
