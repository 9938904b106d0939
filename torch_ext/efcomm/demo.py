"""The main job: a small language model trained on real text three times, with DDP's dense
all-reduce, with efcomm's update exchange (``efcomm.compress_updates``: the form that keeps
AdamW's loss) and with efcomm's gradient hook (``efcomm.register``), and what each run sent.

    python -m efcomm.demo                 # or: efcomm-demo
    python -m efcomm.demo --every 20      # the update exchange every 20 steps
    python -m efcomm.demo --method ef --compressor topk --ratio 0.01   # the gradient hook's run
    python -m efcomm.demo --corpus /usr/share/perl5 --steps 1000

Without a GPU it runs over gloo on the CPU; with GPUs it uses NCCL, one rank per GPU. The
model is efcomm.lm's byte-level causal transformer, trained with AdamW (warm-up and cosine
decay) on a corpus that every machine has: the Python standard library's own top-level source
files (``*.py`` directly in ``sysconfig``'s stdlib path), or every text file under
``--corpus DIR``; split into training and validation by file, tokenised as bytes. Nothing is
downloaded. Both runs start from the same model and see the same batches in the same order.

The update run is what ``efcomm.compress_updates(ddp, adamw)`` gives with no other arguments
(``--every`` changes its exchange interval). The gradient run is what ``efcomm.register(ddp)``
gives with no arguments (efcomm's default method and compressor), unless --method, --compressor
or --ratio say otherwise (what they leave out is efcomm's default too). Methods that keep a
momentum of their own (ef21-sgdm, motef) train with plain SGD (--sgd-lr), as
benchmarks/convergence.py does.

The table depends on the corpus, which differs between Python versions (its size and hash are
printed first), and on the machine's floating-point rounding. Intel's MKL (torch's BLAS on x86)
and torch's own CPU kernels pick code paths by instruction set (AVX-512, AVX2, ...), and the
paths round differently. In the runs measured the dense run did not move, but the compressed
run did (Top-k's choices amplify the last bits): on an AVX-512 machine, this demo's default
run ended at 3.0478 on the AVX-512 paths and 3.0446 on the AVX2 ones (the old MLP demo's EF21
row: 0.4948 and 0.4942). The worker processes are therefore pinned to the AVX2 paths,
unless the environment already says otherwise: ``MKL_CBWR=AVX2`` (MKL's conditional numerical
reproducibility: the same results on every Intel CPU with AVX2, for a fixed number of threads;
the workers use one) and ``ATEN_CPU_CAPABILITY=avx2`` (torch's kernels: the same code on every
machine). On non-Intel CPUs MKL ignores the branch it is given, so their tables may still
differ (by as much as those two runs).
"""

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import lm
from .compressors import FP8, QSGD, Int8, Natural, RandK, ScaledSign, TopK
from .hook import register
from .methods import METHODS
from .state import EFState
from .updates import DEFAULT_EVERY, compress_updates, default_update_compressor

# The code paths the worker processes use on the CPU (see the module docstring).
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
# Methods that keep their own momentum: plain SGD, as benchmarks/convergence.py runs them.
SGD_METHODS = ("ef21-sgdm", "motef")
SGD_LR = 0.5
# Each run's AdamW peak rate: its best of the sweep in docs/convergence.md (3e-3 to 1.92e-1,
# 1,000 steps, this model and corpus): the update exchange wants a larger inner rate than dense
# training (4x here: its averaged, compressed change damps the steps); the hook keeps dense's.
DENSE_LR = 6e-3
UPDATES_LR = 2.4e-2
# About 2 minutes for the three runs on 2 idle CPU cores (4 ranks over gloo).
STEPS = 800

HEADER = ("run", "final validation loss", "gap to dense", "bytes sent / rank", "compression")


def _table(rows: list[tuple]) -> str:
    lines = [HEADER] + rows
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(HEADER))]
    fmt = lambda line: "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(HEADER), sep] + [fmt(line) for line in rows])


DEMO_COMPRESSORS = {
    "topk": lambda ratio: TopK(ratio),
    "randk": lambda ratio: RandK(ratio),
    "qsgd": lambda ratio: QSGD(levels=7, block=512),
    "natural": lambda ratio: Natural(),
    "sign": lambda ratio: ScaledSign(),
    "int8": lambda ratio: Int8(),
    "fp8": lambda ratio: FP8(),
}


def _for_method(compressor, method: str):
    """Unbiased compressors scaled for the error-feedback methods that need a contractive one."""
    if method != "none" and compressor.unbiased and not compressor.contractive:
        return compressor.scaled()
    return compressor


def demo_compressor(name: str, ratio: float, method: str):
    """The --compressor choice: unbiased ones scaled for the error-feedback methods that need
    a contractive compressor, Rand-k made unbiased for ``none``."""
    if name == "randk" and method == "none":
        return RandK(ratio, unbiased=True)
    return _for_method(DEMO_COMPRESSORS[name](ratio), method)


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]; got {text}")
    return value


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive; got {text}")
        return value

    return parse


# The methods that take no compressor: what their messages are, for the results table.
NO_COMPRESSOR = {
    "lag": "dense differences, when triggered",
    "clip21": "dense, clipped",
    "adacgd": "its own Top-k ladder",
}


def run_label(method: str, compressor: str, ratio: float) -> str:
    """The results table's name of the compressed run: what it sends."""
    if method in NO_COMPRESSOR:
        return f"{method} ({NO_COMPRESSOR[method]})"
    return f"{method} + {compressor}" + (f" {ratio:g}" if compressor in ("topk", "randk") else "")


def short_repr(compressor) -> str:
    """A compressor's repr with only its ratio and the fields that differ from the class's
    defaults: ``TopK(ratio=0.01)``, ``TopK(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)``."""
    if not dataclasses.is_dataclass(compressor):
        return repr(compressor)
    shown = []
    for f in dataclasses.fields(compressor):
        value = getattr(compressor, f.name)
        if f.repr and (f.name == "ratio" or f.default is dataclasses.MISSING or value != f.default):
            shown.append(f"{f.name}={value!r}")
    return f"{type(compressor).__name__}({', '.join(shown)})"


def default_label() -> str:
    """The table's name of the run with efcomm's defaults, read from efcomm itself."""
    state = EFState()
    return f"efcomm.register default: {state.method} + {short_repr(state.compressor)}"


def updates_label(every: int) -> str:
    """The table's name of the update exchange's run."""
    return f"efcomm.compress_updates: ef + {short_repr(default_update_compressor())}, every {every} steps"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, checked before any process starts (usage errors exit with status 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m efcomm.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--world-size", type=_positive(int), default=4, help="number of ranks (capped at the GPU count with NCCL)"
    )
    parser.add_argument("--steps", type=_positive(int), default=None, help=f"training steps per run (default: {STEPS})")
    parser.add_argument(
        "--every",
        type=_positive(int),
        default=DEFAULT_EVERY,
        help=f"steps between two exchanges of the update run (default: compress_updates', {DEFAULT_EVERY})",
    )
    parser.add_argument(
        "--ratio", type=_ratio, default=None, help="k/d per bucket for topk and randk, in (0, 1] (default: efcomm's)"
    )
    parser.add_argument(
        "--method",
        default=None,
        choices=sorted(m for m in METHODS if m != "ef21-w"),
        help="the error-feedback method of the compressed run (default: efcomm's)",
    )
    parser.add_argument(
        "--compressor",
        default=None,
        choices=sorted(DEMO_COMPRESSORS),
        help="the compressor of the compressed run (default: efcomm's; unbiased ones are scaled for the "
        "EF methods; lag, clip21 and adacgd take none)",
    )
    parser.add_argument(
        "--lr",
        type=_positive(float),
        default=DENSE_LR,
        help=f"AdamW's peak learning rate of the dense run and the gradient hook's run (default {DENSE_LR:g})",
    )
    parser.add_argument(
        "--updates-lr",
        type=_positive(float),
        default=UPDATES_LR,
        help=f"the inner AdamW's peak learning rate of the update exchange's run (default {UPDATES_LR:g})",
    )
    parser.add_argument(
        "--sgd-lr",
        type=_positive(float),
        default=SGD_LR,
        help=f"the peak learning rate of plain SGD, for {' and '.join(SGD_METHODS)}",
    )
    parser.add_argument("--corpus", default=None, help="a folder of text files (default: the stdlib's *.py)")
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model (efcomm.lm.TINY), 2 ranks, 8 steps: a functional check"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 8 if args.tiny else STEPS
    if args.tiny:
        args.world_size = min(args.world_size, 2)
    if args.backend == "auto":
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    if args.backend == "nccl":
        devices = torch.cuda.device_count()
        if devices == 0:
            parser.error("--backend nccl needs CUDA devices and this machine has none; use --backend gloo")
        if args.world_size > devices:
            print(f"--world-size {args.world_size} capped at the {devices} GPU(s) of this machine (one rank per GPU)")
            args.world_size = devices
    args.default_run = args.method is None and args.compressor is None and args.ratio is None
    default = EFState()  # efcomm's defaults, as register(ddp) would make them
    if args.default_run:
        args.method, args.compressor_obj, args.label = default.method, default.compressor, default_label()
    else:
        args.method = args.method or default.method
        if args.compressor is None:
            # efcomm's default compressor, with the user's ratio when it has one.
            compressor = default.compressor
            if args.ratio is not None:
                if "ratio" not in {f.name for f in dataclasses.fields(compressor)}:
                    parser.error(f"--ratio {args.ratio:g}: efcomm's default compressor {compressor!r} has no ratio")
                compressor = dataclasses.replace(compressor, ratio=args.ratio)
            args.compressor_obj = _for_method(compressor, args.method)
            args.label = f"{args.method} + {short_repr(compressor)}"
            if args.method in NO_COMPRESSOR:
                args.label = run_label(args.method, "", 0.0)
        else:
            ratio = args.ratio if args.ratio is not None else getattr(default.compressor, "ratio", TopK().ratio)
            args.compressor_obj = demo_compressor(args.compressor, ratio, args.method)
            args.label = run_label(args.method, args.compressor, ratio)
        EFState(args.method, args.compressor_obj, allow_biased=args.method == "none")  # any other bad combination
    args.sgd = args.method in SGD_METHODS
    args.updates_label = updates_label(args.every)
    return args


def _config(args, sgd: bool, lr: Optional[float] = None) -> lm.LMConfig:
    model = lm.TINY if args.tiny else {}
    lr = args.sgd_lr if sgd else (args.lr if lr is None else lr)
    return lm.LMConfig(**model, steps=args.steps, optimizer="sgd" if sgd else "adamw", lr=lr)


def worker(rank: int, world: int, init_method: str, args, corpus: dict, out: str) -> None:
    device = lm.init_rank(rank, world, args.backend, init_method)
    try:

        def dense(ddp):
            nbytes = sum(p.numel() * p.element_size() for p in ddp.module.parameters() if p.requires_grad)
            return lambda: nbytes

        def compressed(ddp):
            if args.default_run:
                state = register(ddp)  # exactly what a user gets with no arguments
            else:
                state = register(ddp, args.method, args.compressor_obj, allow_biased=args.method == "none")
            return lambda: state.stats.history[-1]["bytes_sent"]

        updates = {}

        def wrap(ddp, optimizer):
            updates["opt"] = compress_updates(ddp, optimizer, every=args.every)  # the defaults otherwise
            updates["sent"] = 0
            return updates["opt"]

        def update_bytes():
            total = updates["opt"].stats.bytes_sent
            sent, updates["sent"] = total - updates["sent"], total
            return sent

        progress = not args.no_progress
        inner = _config(args, False, args.updates_lr)
        runs = {
            "dense": lm.train(_config(args, False), corpus, dense, device, "dense all-reduce", progress),
            "updates": lm.train(inner, corpus, lambda ddp: update_bytes, device, args.updates_label, progress, wrap),
            "compressed": lm.train(_config(args, args.sgd), corpus, compressed, device, args.label, progress),
        }
        if rank == 0:
            torch.save(runs, Path(out) / "runs.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def pin_cpu_paths(environ) -> None:
    """Sets MKL's and torch's CPU code paths to AVX2 in ``environ`` (for the processes started
    after it), unless it already names them."""
    for name, value in PINNED_ENV.items():
        environ.setdefault(name, value)


def table_rows(dense: dict, compressed: list[tuple[str, dict]], steps: int) -> list[tuple]:
    """The table's rows: the dense run, then each (label, run) of ``compressed`` (lm.train's
    records of rank 0)."""
    dense_loss = dense["final_val_loss"]
    dense_sent = round(dense["bytes_per_rank_per_step"] * steps)
    rows = [("dense all-reduce", f"{dense_loss:.4f}", "-", f"{dense_sent:,}", "1.0x")]
    for label, run in compressed:
        loss, sent = run["final_val_loss"], round(run["bytes_per_rank_per_step"] * steps)
        gap = f"{loss / dense_loss - 1.0:+.2%}"
        rows.append((label, f"{loss:.4f}", gap, f"{sent:,}", f"{dense_sent / sent:.1f}x" if sent else "inf"))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        corpus = lm.load_corpus(args.corpus)
    except ValueError as e:
        raise SystemExit(f"efcomm.demo: {e}") from None
    print(f"corpus: {lm.describe(corpus)}", flush=True)
    adamw = f"AdamW lr {args.lr:g}"
    optimizer = f"plain SGD lr {args.sgd_lr:g}: {args.method} keeps its own momentum" if args.sgd else adamw
    print(
        f"efcomm demo: {args.world_size} ranks over {args.backend}, {args.steps} steps, "
        f"dense all-reduce ({adamw}) vs {args.updates_label} (AdamW lr {args.updates_lr:g}) vs {args.label} "
        f"({optimizer})",
        flush=True,
    )
    pin_cpu_paths(os.environ)  # read by the worker processes' torch and MKL (see the docstring)
    with tempfile.TemporaryDirectory() as tmp:
        init_method = lm.free_init_method()
        mp.spawn(worker, args=(args.world_size, init_method, args, corpus, tmp), nprocs=args.world_size, join=True)
        runs = torch.load(Path(tmp) / "runs.pt")
    compressed = [(args.updates_label, runs["updates"]), (args.label, runs["compressed"])]
    rows = table_rows(runs["dense"], compressed, args.steps)
    print(_table(rows))


if __name__ == "__main__":
    main()
