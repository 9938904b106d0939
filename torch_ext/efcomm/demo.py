"""The main job: a small data-parallel training run twice, dense all-reduce vs EF21 + Top-k.

    python -m efcomm.demo                 # or: efcomm-demo
    python -m efcomm.demo --world-size 4 --steps 400 --ratio 0.01

Without a GPU it runs over gloo on the CPU; with GPUs it uses NCCL, one rank per GPU.
The data is generated (a random teacher network labels Gaussian inputs): nothing is
downloaded. The training itself is efcomm.harness, which the multi-process tests drive too.
"""

import argparse
from dataclasses import replace
from typing import Optional

import torch

from .compressors import FP8, QSGD, Int8, Natural, RandK, ScaledSign, TopK
from .harness import TrainConfig, run
from .methods import METHODS
from .state import EFState


def _table(rows: list[tuple]) -> str:
    header = ("run", "final train loss", "test accuracy", "bytes sent / rank", "compression")
    lines = [header] + rows
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    fmt = lambda line: "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep] + [fmt(line) for line in rows])


DEMO_COMPRESSORS = {
    "topk": lambda ratio: TopK(ratio),
    "randk": lambda ratio: RandK(ratio),
    "qsgd": lambda ratio: QSGD(levels=7, block=512),
    "natural": lambda ratio: Natural(),
    "sign": lambda ratio: ScaledSign(),
    "int8": lambda ratio: Int8(),
    "fp8": lambda ratio: FP8(),
}


def demo_compressor(name: str, ratio: float, method: str):
    """The --compressor choice: unbiased ones scaled for the error-feedback methods that need
    a contractive compressor, Rand-k made unbiased for ``none``."""
    if name == "randk" and method == "none":
        return RandK(ratio, unbiased=True)
    compressor = DEMO_COMPRESSORS[name](ratio)
    if method != "none" and compressor.unbiased and not compressor.contractive:
        return compressor.scaled()
    return compressor


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


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, checked before any process starts (usage errors exit with status 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m efcomm.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--world-size", type=_positive(int), default=4, help="number of ranks (capped at the GPU count with NCCL)"
    )
    parser.add_argument("--steps", type=_positive(int), default=500)
    parser.add_argument("--ratio", type=_ratio, default=0.1, help="k/d per bucket for topk and randk, in (0, 1]")
    parser.add_argument(
        "--method",
        default="ef21",
        choices=sorted(m for m in METHODS if m != "ef21-w"),
        help="the error-feedback method of the compressed run",
    )
    parser.add_argument(
        "--compressor",
        default="topk",
        choices=sorted(DEMO_COMPRESSORS),
        help="the compressor of the compressed run (unbiased ones are scaled for the EF methods; "
        "lag, clip21 and adacgd take none)",
    )
    parser.add_argument("--lr", type=_positive(float), default=TrainConfig.lr)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    args = parser.parse_args(argv)
    if args.backend == "auto":
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    if args.backend == "nccl":
        devices = torch.cuda.device_count()
        if devices == 0:
            parser.error("--backend nccl needs CUDA devices and this machine has none; use --backend gloo")
        if args.world_size > devices:
            print(f"--world-size {args.world_size} capped at the {devices} GPU(s) of this machine (one rank per GPU)")
            args.world_size = devices
    args.compressor_obj = demo_compressor(args.compressor, args.ratio, args.method)
    EFState(args.method, args.compressor_obj, allow_biased=args.method == "none")  # any other bad combination
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    world_size, compressor = args.world_size, args.compressor_obj
    base = TrainConfig(steps=args.steps, ratio=args.ratio, lr=args.lr, backend=args.backend, progress=True)
    label = run_label(args.method, args.compressor, args.ratio)
    print(f"efcomm demo: {world_size} ranks over {args.backend}, {args.steps} steps, {label}")
    dense = run(replace(base, method="dense"), world_size)[0]
    compressed = replace(base, method=args.method, compressor=compressor)
    if args.method in ("ef21-sgdm", "motef"):
        # The method keeps its own momentum: plain SGD with the same effective step.
        compressed = replace(compressed, momentum=0.0, lr=base.lr / (1.0 - base.momentum))
        print(f"{args.method} keeps its own momentum: its run uses SGD without momentum, lr {compressed.lr:g}")
    result = run(compressed, world_size)[0]
    dense_bytes, sent = result["dense_bytes"], result["bytes_sent"]
    rows = [
        ("dense all-reduce", f"{dense['train_loss']:.4f}", f"{dense['test_accuracy']:.2%}", f"{dense_bytes:,}", "1.0x"),
        (
            label,
            f"{result['train_loss']:.4f}",
            f"{result['test_accuracy']:.2%}",
            f"{sent:,}",
            f"{dense_bytes / sent:.1f}x",
        ),
    ]
    print(_table(rows))


if __name__ == "__main__":
    main()
