"""Loss at equal bytes on real text: a small GPT-style language model trained with DDP, once per
gradient exchange, against DDP's dense all-reduce, torch's fp16 hook and PowerSGD.

    python benchmarks/convergence.py                          # the default runs, two lengths
    python benchmarks/convergence.py --steps 1000 --seeds 0 1 2 --runs allreduce default powersgd:1
    python benchmarks/convergence.py --corpus /usr/share/perl/5.36 --steps 1000
    python benchmarks/convergence.py --tiny                   # seconds: a functional run (CI)

Data: by default the Python standard library's own top-level source files (``*.py`` directly
in ``sysconfig.get_paths()["stdlib"]``: no site-packages, no test/), or every text file under
``--corpus DIR``; split into training and validation by file (a file is in validation when
the SHA-256 of its relative path ends in a byte below 26, about 10 %), tokenised as bytes. The
corpus's size and hash are printed and saved: the standard library differs between Python
versions, and so do the figures.

Model: a byte-level causal transformer (token and position embeddings, pre-norm blocks of
``torch.nn.TransformerEncoderLayer`` with a causal mask, tied output head). Every run starts
from the same initial model (seeded), sees the same batches in the same order (windows drawn
from (seed, step)), and uses the same optimizer: AdamW (betas 0.9/0.95, weight decay 0.1) with
a linear warm-up over 5 % of the steps and a cosine decay to 10 % of the peak; the methods
that keep a momentum of their own (ef21-sgdm, motef) and runs named ``sgd/...`` take plain SGD
(no momentum) on the same schedule, with ``--sgd-lr``.

Runs (``--runs``; each one a fresh DDP model with its own hook, in one process group of
``--world-size`` ranks, gloo on the CPU, NCCL on GPUs):
    allreduce                  DDP's all-reduce (the dense baseline)
    fp16                       torch's fp16_compress_hook
    powersgd:R                 torch's PowerSGD (error feedback and warm start on) at rank R,
                               starting at 10 % of the steps (dense all-reduce before: counted)
    default                    efcomm.register(ddp): what a user gets with no arguments
    METHOD:COMPRESSOR[:RATIO][:FLAG]   as benchmarks/ddp_hooks.py (flag ``compact``: Top-k with
                               bf16 values and 16-bit offsets); METHOD[key=value,...] sets the
                               method's parameters, a suffix @key=int,... EFState options
                               (``ef:topk:0.01:compact@dense_steps=50``), a prefix sgd/ or
                               adamw/ the optimizer

Bytes per rank and step: this rank's payload handed to the collectives, over the whole run
(dense starts and PowerSGD's dense steps included), against the dense all-reduce's (the
gradient's bytes). Output: a table per length (final validation loss, its gap to the dense
run, bytes per rank and step, compression, wall time), <out>/convergence.json (one record per
run and length) and <out>/convergence.png (validation loss against steps, and against
cumulative bytes, at the longest length).
"""

import argparse
import json
from dataclasses import dataclass
from typing import Optional
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_hooks import HookSpec, one_bucket_at_a_time, parse_hook, positive_float, positive_int  # noqa: E402

import efcomm  # noqa: E402
from efcomm import lm  # noqa: E402

DEFAULT_RUNS = (
    "allreduce",
    "fp16",
    "powersgd:1",
    "powersgd:4",
    "default",
    "ef21:topk:0.01",
    "ef21:topk:0.1",
    "ef21:topk:0.01:compact",
    "ef21:topk:0.1:compact",
    "ef:topk:0.01",
    "ef:topk:0.1:compact",
    "ef21-sgdm:topk:0.01",
    "ef21:int8",
    "none:qsgd",
)
SGD_METHODS = ("ef21-sgdm", "motef")


# ---- one run on one rank ----------------------------------------------------------------------


def state_options(name: str) -> dict:
    """EFState options after "@" in a run name: ``ef:topk:0.01:compact@dense_steps=50``."""
    _, at, tail = name.partition("@")
    if not at:
        return {}
    try:
        return {k: int(v) for k, v in (item.split("=") for item in tail.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"run {name!r}: options after '@' must be key=int") from None


@dataclass(frozen=True)
class UpdateSpec:
    """``updates[:EVERY[:OUTER_LR[:MOMENTUM]]][/METHOD:COMPRESSOR...]``: efcomm.compress_updates
    (the parts left out are its defaults; after the slash, the method and compressor in the
    syntax of the other runs)."""

    every: Optional[int] = None
    outer_lr: Optional[float] = None
    momentum: float = 0.0


def update_spec(name: str) -> tuple[Optional[UpdateSpec], str]:
    """The update exchange of a run name (None for a gradient exchange) and the rest of the
    name (the method and compressor; "default" when left out)."""
    base = name.partition("@")[0]
    if not base.startswith("updates"):
        return None, base
    head, slash, rest = base.partition("/")
    parts = head.split(":")
    if parts[0] != "updates" or len(parts) > 4:
        raise argparse.ArgumentTypeError(f"run {name!r}: expected updates[:EVERY[:OUTER_LR[:MOMENTUM]]][/METHOD:...]")
    try:
        every = positive_int(parts[1]) if len(parts) > 1 else None
        outer_lr = positive_float(parts[2]) if len(parts) > 2 else None
        momentum = float(parts[3]) if len(parts) > 3 else 0.0
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"run {name!r}: {e}") from None
    if not 0.0 <= momentum < 1.0:
        raise argparse.ArgumentTypeError(f"run {name!r}: the outer momentum ({momentum}) must be in [0, 1)")
    return UpdateSpec(every, outer_lr, momentum), (rest if slash else "default")


def run_spec(name: str) -> HookSpec:
    """The hook of a run name (see the module docstring): an optimizer prefix ("sgd/" or
    "adamw/") is dropped, and method parameters in brackets (``ef21-sgdm[eta=0.05]:topk:0.01``)
    make the method object (numbers, or true/false)."""
    base = name.split("/", 1)[1] if name.startswith(("sgd/", "adamw/")) else name
    _, base = update_spec(base)
    if base == "default":
        return HookSpec(name, "efcomm-default", "all_gather")
    method_text, bracket, rest = base.partition("[")
    if not bracket:
        return parse_hook(base)
    params, close, tail = rest.partition("]")
    if not close:
        raise argparse.ArgumentTypeError(f"run {name!r}: unclosed '[' in the method's parameters")
    try:
        value = lambda v: {"true": True, "false": False}[v.lower()] if v.lower() in ("true", "false") else float(v)
        options = {k: value(v) for k, v in (item.split("=") for item in params.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"run {name!r}: method parameters must be key=number") from None
    spec = parse_hook(method_text + tail)
    try:
        method = efcomm.METHODS[method_text](**options)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"run {name!r}: {e}") from None
    return HookSpec(name, "efcomm", spec.collective, method=method, compressor=spec.compressor)


def uses_sgd(name: str, spec: HookSpec) -> bool:
    if name.startswith(("sgd/", "adamw/")):
        return name.startswith("sgd/")
    return spec.kind == "efcomm" and getattr(spec.method, "name", spec.method) in SGD_METHODS


class Bytes:
    """This rank's payload per step for each kind of hook (what it hands to the collectives):
    registers the hook; calling it after a step gives that step's bytes. A run of the update
    exchange registers nothing here: :meth:`wrap` makes its optimizer."""

    def __init__(self, spec: HookSpec, ddp, powersgd_start: int, options: dict, updates: Optional[UpdateSpec] = None):
        self.kind = "updates" if updates is not None else spec.kind
        self.spec, self.updates, self.options = spec, updates, options
        params = [p for p in ddp.module.parameters() if p.requires_grad]
        self.dense = sum(p.numel() * p.element_size() for p in params)
        self.element_size = params[0].element_size()
        self.state, self._seen = None, 0
        group = ddp.process_group
        if spec.kind == "fp16":
            ddp.register_comm_hook(group, default_hooks.fp16_compress_hook)
        elif spec.kind == "powersgd":
            self.state = powerSGD_hook.PowerSGDState(
                group, matrix_approximation_rank=spec.powersgd_rank, start_powerSGD_iter=powersgd_start
            )
            gloo = dist.get_backend(group) == dist.Backend.GLOO
            ddp.register_comm_hook(self.state, one_bucket_at_a_time if gloo else powerSGD_hook.powerSGD_hook)
        elif self.kind == "updates":
            self._sent = 0
        elif spec.kind == "efcomm":
            self.state = efcomm.register(ddp, spec.method, spec.compressor, **options)
        elif spec.kind == "efcomm-default":
            self.state = efcomm.register(ddp, **options)

    def wrap(self, ddp, optimizer):
        """The optimizer of the run: efcomm.compress_updates around the inner one (update
        exchange), else the inner one."""
        if self.kind != "updates":
            return optimizer
        u, spec = self.updates, self.spec
        method = ("ef", None) if spec.kind == "efcomm-default" else (spec.method, spec.compressor)
        self.state = efcomm.compress_updates(
            ddp, optimizer, *method, every=u.every, outer_lr=u.outer_lr, outer_momentum=u.momentum, **self.options
        )
        return self.state

    def __call__(self) -> int:
        if self.kind == "updates":
            total = self.state.stats.bytes_sent
            sent, self._sent = total - self._sent, total
            return sent
        if self.kind == "allreduce":
            return self.dense
        if self.kind == "fp16":
            return self.dense // 2
        if self.kind == "powersgd":
            after = self.state.total_numel_after_compression
            # Before start_powerSGD_iter the hook all-reduces the buckets and counts nothing.
            sent = (after - self._seen) * self.element_size if after > self._seen else self.dense
            self._seen = after
            return sent
        return self.state.stats.history[-1]["bytes_sent"]


def default_label() -> str:
    state = efcomm.EFState()
    return f"efcomm default: {state.method_impl!r} + {state.compressor!r}"


def run_label(name: str, spec: HookSpec) -> str:
    updates, _ = update_spec(name)
    if updates is None:
        return spec.label() if spec.kind != "efcomm-default" else default_label()
    u = efcomm.updates
    compressor = u.default_update_compressor() if spec.kind == "efcomm-default" else spec.compressor
    method = "ef" if spec.kind == "efcomm-default" else spec.method
    every = updates.every or u.DEFAULT_EVERY
    outer = updates.outer_lr or u.DEFAULT_OUTER_LR
    return f"efcomm.compress_updates: {method} + {compressor!r}, every {every}, outer lr {outer}, momentum {updates.momentum}"


def run_config(args, name: str, steps: int, seed: int, lr: float) -> lm.LMConfig:
    """The run's model and schedule; ``lr`` is AdamW's peak (SGD runs take --sgd-lr times
    lr / --lr, so that a sweep scales both alike)."""
    spec = run_spec(name)
    sgd = uses_sgd(name, spec)
    peak = args.sgd_lr * lr / args.lr if sgd else lr
    return lm.LMConfig(**args.model, steps=steps, seed=seed, optimizer="sgd" if sgd else "adamw", lr=peak)


def sweep_plan(args) -> list[tuple[int, int, str, float]]:
    """The learning-rate sweep: every run at every rate of --lrs (a run named in --lr-from's
    record: at its best rate there), at --sweep-steps, first seed."""
    return [
        (args.sweep_steps, args.seeds[0], name, lr)
        for name in args.runs
        for lr in ([args.lr_from[name]] if name in args.lr_from else args.lrs)
    ]


def best_lrs(results: list[dict], args) -> dict:
    """Per run, the rate of the sweep with the lowest final validation loss (non-finite: worst)."""
    best = {}
    for name in args.runs:
        swept = [
            r for r in results if r["name"] == name and r["steps"] == args.sweep_steps and r["seed"] == args.seeds[0]
        ]
        loss = lambda r: r["final_val_loss"] if math.isfinite(r["final_val_loss"]) else math.inf
        best[name] = min(swept, key=loss)["lr"]
    return best


def main_plan(args, best: dict) -> list[tuple[int, int, str, float]]:
    """Every run at its best rate at every length with the first seed; at the longest length,
    the runs of --seed-runs again with each further seed."""
    plan = [(steps, args.seeds[0], name, best[name]) for steps in args.steps for name in args.runs]
    longest = max(args.steps)
    plan += [
        (longest, seed, name, best[name]) for seed in args.seeds[1:] for name in args.runs if name in args.seed_runs
    ]
    return plan


def run_key(args, corpus: dict) -> dict:
    """What a recorded run must share with this invocation to be reused by --resume (how often
    it was validated does not change a run)."""
    model = {k: v for k, v in args.model.items() if k != "val_every"}
    return {"corpus": corpus["sha256"], "model": model, "world_size": args.world_size, "backend": args.backend}


def recorded_runs(path: Path, key: dict) -> list[dict]:
    """The runs of <out>/runs.jsonl made with ``key`` (the same corpus, model and ranks)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["run"] for r in records if r["key"] == key]


def worker(rank: int, world: int, init_method: str, args, corpus: dict, out_dir: str, done: list) -> None:
    device = lm.init_rank(rank, world, args.backend, init_method)
    try:
        results = list(done)  # --resume: the runs recorded by earlier invocations
        log = Path(args.out) / "runs.jsonl"

        def run(steps: int, seed: int, name: str, lr: float) -> None:
            if any((r["steps"], r["seed"], r["name"], r["lr"]) == (steps, seed, name, lr) for r in results):
                return
            spec, cfg = run_spec(name), run_config(args, name, steps, seed, lr)
            updates, _ = update_spec(name)
            meter = []

            def install(ddp):
                meter.append(Bytes(spec, ddp, max(2, steps // 10), state_options(name), updates))
                return meter[0]

            desc = f"{name} (lr {lr:g}, seed {seed}, {steps} steps)"
            wrap = lambda ddp, opt: meter[0].wrap(ddp, opt)
            record = lm.train(cfg, corpus, install, device, desc, not args.quiet, wrap)
            record = {"name": name, "label": run_label(name, spec), "seed": seed, "steps": steps, "lr": lr} | record
            results.append(record | {"optimizer": cfg.optimizer})
            if rank == 0:  # every finished run, at once: an interrupted invocation loses only the one running
                with log.open("a") as f:
                    f.write(json.dumps({"key": run_key(args, corpus), "run": results[-1]}) + "\n")
                print(
                    f"  {name:<28} lr {lr:<8g} seed {seed} {steps:>5} steps: val {record['final_val_loss']:.4f}, "
                    f"{record['bytes_per_rank_per_step'] / record['dense_bytes_per_rank_per_step']:.4%} of dense "
                    f"bytes, {record['wall_s']:.0f} s",
                    flush=True,
                )

        for item in sweep_plan(args):
            run(*item)
        best = [best_lrs(results, args) if rank == 0 else None]
        dist.broadcast_object_list(best, src=0)  # the validation losses are rank 0's
        for item in main_plan(args, best[0]):
            run(*item)
        if rank == 0:
            torch.save({"results": results, "best": best[0]}, Path(out_dir) / "results.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ---- the report ----------------------------------------------------------------------------------


def sweep_table(results: list[dict], args, best: dict) -> str:
    """The final validation loss of every run at every rate of the sweep (the best marked *)."""
    lines = [("run",) + tuple(f"lr {lr:g}" for lr in args.lrs)]
    for name in args.runs:
        cells = []
        for lr in args.lrs:
            (r,) = [
                r
                for r in results
                if (r["name"], r["lr"], r["steps"], r["seed"]) == (name, lr, args.sweep_steps, args.seeds[0])
            ]
            cells.append(f"{r['final_val_loss']:.4f}" + ("*" if lr == best[name] else ""))
        lines.append((name,) + tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(lines[0]), rule] + [fmt(x) for x in lines[1:]])


def at_best(results: list[dict], best: dict) -> list[dict]:
    """The runs at their run's best rate (what the main table compares)."""
    return [r for r in results if r["name"] in best and r["lr"] == best[r["name"]]]


def summarise(results: list[dict]) -> list[dict]:
    """One row per (length, run): the mean over seeds, the seed spread, and the gap to the dense
    run's mean over the same seeds at the same length (a run of seed 0 against dense seed 0).
    ``results`` holds one rate per run (:func:`at_best`)."""
    rows = []
    for steps in sorted({r["steps"] for r in results}):
        at = [r for r in results if r["steps"] == steps]
        dense = {r["seed"]: r["final_val_loss"] for r in at if r["name"] == "allreduce"}
        for name in dict.fromkeys(r["name"] for r in at):
            runs = [r for r in at if r["name"] == name]
            losses = [r["final_val_loss"] for r in runs]
            mean = statistics.fmean(losses)
            seeds = [r["seed"] for r in runs]
            dense_mean = statistics.fmean(dense[s] for s in seeds) if all(s in dense for s in seeds) else None
            sent = statistics.fmean(r["bytes_per_rank_per_step"] for r in runs)
            rows.append(
                {
                    "steps": steps,
                    "name": name,
                    "label": runs[0]["label"],
                    "lr": runs[0]["lr"],
                    "seeds": seeds,
                    "final_val_loss": mean,
                    "spread": (max(losses) - min(losses)) if len(losses) > 1 else 0.0,
                    "gap_to_dense": (mean / dense_mean - 1.0) if dense_mean else None,
                    "bytes_per_rank_per_step": sent,
                    "dense_bytes_per_rank_per_step": runs[0]["dense_bytes_per_rank_per_step"],
                    "wall_s": statistics.fmean(r["wall_s"] for r in runs),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    header = (
        "steps",
        "run",
        "lr",
        "final val loss",
        "seed spread",
        "gap to dense",
        "bytes/rank/step",
        "of dense",
        "wall s",
    )
    lines = [header]
    for r in rows:
        gap = "n/a" if r["gap_to_dense"] is None else f"{r['gap_to_dense']:+.2%}"
        frac = r["bytes_per_rank_per_step"] / r["dense_bytes_per_rank_per_step"]
        lines.append(
            (
                str(r["steps"]),
                r["name"],
                f"{r['lr']:g}",
                f"{r['final_val_loss']:.4f}",
                f"{r['spread']:.4f}" if len(r["seeds"]) > 1 else "-",
                gap,
                f"{r['bytes_per_rank_per_step']:,.0f}",
                f"{frac:.2%} ({1 / frac:.0f}x)" if frac > 0 else "0",
                f"{r['wall_s']:.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(x) for x in lines[1:]])


def bytes_curve(run: dict) -> list:
    """[step, cumulative bytes sent by this rank] at each validation step of a run."""
    cumulative, total = [0], 0
    for sent in run["bytes_per_step"]:
        total += sent
        cumulative.append(total)
    return [[step, cumulative[step]] for step, _ in run["val_curve"]]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = max(r["steps"] for r in results)
    seed = min(r["seed"] for r in results)
    shown = [r for r in results if r["steps"] == steps and r["seed"] == seed and len(r["val_curve"]) > 1]
    if not shown:
        return
    fig, (by_step, by_bytes) = plt.subplots(1, 2, figsize=(14, 5.5))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(shown):
        style = {"color": colors[i % len(colors)], "linestyle": ("-", "--", ":")[i // len(colors) % 3]}
        xs, ys = zip(*r["val_curve"])
        by_step.plot(xs, ys, label=r["name"], **style)
        sent = [b for _, b in r["bytes_curve"]]
        by_bytes.plot(sent[1:], ys[1:], label=r["name"], **style)
    finite = [y for r in shown for _, y in r["val_curve"][1:] if math.isfinite(y)]
    for ax in (by_step, by_bytes):
        ax.set_ylabel("validation loss (nats per byte)")
        ax.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 2.0) + 0.05)
        ax.grid(alpha=0.3)
    by_step.set_xlabel("step")
    by_bytes.set_xlabel("cumulative bytes sent per rank (log)")
    by_bytes.set_xscale("log")
    by_step.legend(fontsize=7, ncol=2)
    fig.suptitle(f"byte-level LM, {steps} steps, seed {seed}: validation loss against steps and against bytes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the command line -------------------------------------------------------------------------


def _run_name(text: str) -> str:
    try:
        run_spec(text)
        options = state_options(text)
        if options:
            efcomm.EFState(**options)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"--runs: {e}") from e
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=_run_name, default=list(DEFAULT_RUNS))
    parser.add_argument("--steps", nargs="+", type=positive_int, default=[300, 1000], help="run lengths")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--seed-runs",
        nargs="*",
        default=["allreduce", "default"],
        help="the runs repeated with every seed at the longest length (the others: the first seed)",
    )
    parser.add_argument("--world-size", type=positive_int, default=4)
    parser.add_argument("--corpus", default=None, help="a folder of text files (default: the stdlib's *.py)")
    parser.add_argument("--max-corpus-bytes", type=positive_int, default=64 * 2**20)
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="AdamW's peak learning rate")
    parser.add_argument(
        "--lrs",
        nargs="+",
        type=positive_float,
        default=None,
        help="AdamW peak rates swept for every run at --sweep-steps (first seed); each run then takes its "
        "best rate at every length and seed (default: --lr alone)",
    )
    parser.add_argument(
        "--lr-from",
        default=None,
        help="a convergence.json of an earlier sweep: the runs it swept take their best rate from it, unswept",
    )
    parser.add_argument(
        "--sweep-steps", type=positive_int, default=None, help="the sweep's length (default: the longest of --steps)"
    )
    parser.add_argument("--sgd-lr", type=positive_float, default=0.5, help="SGD's peak learning rate")
    parser.add_argument(
        "--bucket-cap-mb",
        type=positive_float,
        default=None,
        help="DDP's bucket size (default: DDP's; a tiny one gives each parameter its own bucket)",
    )
    parser.add_argument("--val-every", type=positive_int, default=50)
    parser.add_argument("--val-windows", type=positive_int, default=256)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--out", default="runs/convergence")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, 2 ranks, 8 steps: a functional run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs recorded in <out>/runs.jsonl (every finished run is appended there) with the same "
        "corpus, model and ranks, instead of running them again",
    )
    args = parser.parse_args(argv)
    fields = ("d_model", "layers", "heads", "context", "batch")
    args.model = {k: getattr(lm.LMConfig, k) for k in fields} | {
        "val_every": args.val_every,
        "val_windows": args.val_windows,
        "bucket_cap_mb": args.bucket_cap_mb,
    }
    if args.tiny:
        args.model |= lm.TINY
        args.world_size = 2
        if args.steps == parser.get_default("steps"):
            args.steps = [8]
    args.lrs = args.lrs or [args.lr]
    args.lr_from = json.loads(Path(args.lr_from).read_text())["best_lr"] if args.lr_from else {}
    args.sweep_steps = args.sweep_steps or max(args.steps)
    for name in args.runs:
        every = (update_spec(name)[0] or UpdateSpec(1)).every or efcomm.updates.DEFAULT_EVERY
        if args.val_every % every or any(steps % every for steps in args.steps + [args.sweep_steps]):
            parser.error(f"run {name!r} exchanges every {every} steps: --val-every and every length must be multiples")
    if args.backend == "auto":
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    if args.backend == "nccl" and args.world_size > torch.cuda.device_count():
        parser.error(f"--world-size {args.world_size} exceeds the {torch.cuda.device_count()} GPU(s) for nccl")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        corpus = lm.load_corpus(args.corpus, args.max_corpus_bytes)
    except ValueError as e:
        raise SystemExit(f"convergence.py: {e}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in lm.ByteGPT(lm.LMConfig(**args.model)).parameters())
    print(
        f"corpus: {lm.describe(corpus)}\n"
        f"model: {args.model} ({params:,} parameters); {args.world_size} ranks over {args.backend}; "
        f"steps {args.steps}, seeds {args.seeds}; AdamW peak lr {', '.join(f'{lr:g}' for lr in args.lrs)} "
        f"(swept at {args.sweep_steps} steps), SGD lr {args.sgd_lr:g} (scaled alike)",
        flush=True,
    )
    done = recorded_runs(out / "runs.jsonl", run_key(args, corpus)) if args.resume else []
    if done:
        print(f"--resume: {len(done)} run(s) recorded in {out / 'runs.jsonl'} are reused", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            worker,
            args=(args.world_size, lm.free_init_method(), args, corpus, tmp, done),
            nprocs=args.world_size,
            join=True,
        )
        saved = torch.load(Path(tmp) / "results.pt")
    results, best = saved["results"], saved["best"]
    for r in results:
        r["bytes_curve"] = bytes_curve(r)
    if len(args.lrs) > 1 and not args.lr_from:
        print(f"learning-rate sweep, {args.sweep_steps} steps, seed {args.seeds[0]} (* the best):")
        print(sweep_table(results, args, best))
    rows = summarise(at_best(results, best))
    print(table(rows))
    record = {
        "corpus": {k: corpus[k] for k in ("root", "files", "bytes", "sha256")},
        "model": args.model,
        "parameters": params,
        "world_size": args.world_size,
        "backend": args.backend,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lrs": args.lrs,
        "sweep_steps": args.sweep_steps,
        "best_lr": best,
        "summary": rows,
        "runs": [{k: v for k, v in r.items() if k != "bytes_per_step"} for r in results],
    }
    (out / "convergence.json").write_text(json.dumps(record, indent=1))
    plot(at_best(results, best), out / "convergence.png")
    print(f"wrote {out / 'convergence.json'} and {out / 'convergence.png'}")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
