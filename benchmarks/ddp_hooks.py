"""The hooks bench_ddp.py compares, parsed from the command line, and how each counts its bytes.

Specs:
    allreduce                         DDP's built-in all-reduce (no hook): the baseline
    fp16, bf16                        torch's fp16_compress_hook / bf16_compress_hook
    powersgd:R                        torch's powerSGD_hook, matrix approximation rank R
    METHOD:COMPRESSOR[:RATIO][:FLAG]  efcomm.register(ddp, METHOD, compressor); COMPRESSOR is
                                      topk, randk or chunk (RATIO, default 0.01; chunk:
                                      ChunkTopK, Top-k per 4096 entries, flag 2bit (the
                                      default), 4bit or 8bit), int8, fp8, sign,
                                      natural or qsgd; FLAG "threshold" (topk: threshold Top-k),
                                      "scaled" (C / (omega + 1), for unbiased compressors
                                      under the error-feedback methods), "side" (the encode
                                      on a side stream: side_stream=True) or "compact" (topk:
                                      bf16 values, 16-bit offsets); flags combine

Bytes per step are this rank's payload handed to the collectives in one step (what
``efcomm``'s ``state.stats.bytes_sent`` counts), not the traffic the collective's algorithm
generates (the wire model converts one into the other):
  - allreduce: every bucket's buffer, i.e. the gradient's bytes (the sum of the bucket sizes);
  - fp16 and bf16: the buckets cast to 2-byte floats, half of that;
  - PowerSGD: from the hook's own counter of elements after compression over the measured
    steps (``total_numel_after_compression``: per gradient tensor, viewed as a matrix n x m,
    P (n x R) and Q (m x R) when that compresses by more than ``min_compression_rate`` 2, else
    the n x m tensor itself, all-reduced uncompressed like the 1-D ones), times the bucket's
    element size; it starts compressing at step 2 (``start_powerSGD_iter``), in the warm-up;
  - efcomm: ``state.stats.history`` over the measured steps.

On gloo, PowerSGD runs one bucket at a time: its callbacks wait for one all-reduce inside the
callback of another, which on gloo run on the group's two worker threads, so two buckets in
flight can block both threads and deadlock (seen here with the --tiny models); on NCCL the
callbacks do not block a thread and the hook runs as is.
"""

import argparse
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

import efcomm
from efcomm.wire_model import ALL_GATHER, ALL_REDUCE

DEFAULT_HOOKS = (
    "allreduce",
    "fp16",
    "bf16",
    "powersgd:1",
    "powersgd:4",
    "ef21:topk:0.01",
    "ef21:topk:0.01:threshold",
    "ef21:randk:0.01",
    "ef:topk:0.01",
    "ef21:int8",
)
COMPRESSORS = {
    "topk": efcomm.TopK,
    "randk": efcomm.RandK,
    "int8": efcomm.Int8,
    "fp8": efcomm.FP8,
    "sign": efcomm.ScaledSign,
    "natural": efcomm.Natural,
    "qsgd": efcomm.QSGD,
    "chunk": efcomm.ChunkTopK,
}
WITH_RATIO = ("topk", "randk", "chunk")
BITS_FLAGS = {"2bit": 2, "4bit": 4, "8bit": 8}  # chunk: the values' bits
POWERSGD_START = 2  # the smallest start that PowerSGD's error feedback and warm start allow


@dataclass(frozen=True)
class HookSpec:
    name: str  # as given on the command line
    kind: str  # "allreduce", "fp16", "bf16", "powersgd" or "efcomm"
    collective: str  # how the wire model exchanges its bytes
    powersgd_rank: int = 0
    method: Optional[str] = None
    compressor: Optional[efcomm.Compressor] = None
    side_stream: bool = False

    def label(self) -> str:
        if self.kind == "efcomm":
            return f"efcomm {self.method} + {self.compressor!r}" + (", side stream" if self.side_stream else "")
        return {
            "allreduce": "DDP all-reduce (no hook)",
            "fp16": "torch fp16_compress_hook",
            "bf16": "torch bf16_compress_hook",
        }.get(self.kind, f"torch PowerSGD rank {self.powersgd_rank}")


def positive_int(text: str) -> int:
    """An argparse type: a positive int."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive int")
    return int(text)


def positive_float(text: str) -> float:
    """An argparse type: a positive number."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _ratio(text: str, spec: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        ratio = float("nan")
    if not 0.0 < ratio <= 1.0:
        raise argparse.ArgumentTypeError(f"hook {spec!r}: ratio {text!r} must be a number in (0, 1]")
    return ratio


def parse_hook(spec: str) -> HookSpec:
    """A HookSpec from its command-line form (see the module docstring); raises
    argparse.ArgumentTypeError naming the spec and what is wrong with it."""
    if spec in ("allreduce", "fp16", "bf16"):
        return HookSpec(spec, spec, ALL_REDUCE)
    parts = spec.split(":")
    if parts[0] == "powersgd":
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise argparse.ArgumentTypeError(f"hook {spec!r}: PowerSGD takes a rank, a positive int (powersgd:4)")
        return HookSpec(spec, "powersgd", ALL_REDUCE, powersgd_rank=int(parts[1]))
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(
            f"hook {spec!r}: expected allreduce, fp16, bf16, powersgd:RANK or METHOD:COMPRESSOR[:RATIO][:FLAG]"
        )
    method, name, rest = parts[0], parts[1], parts[2:]
    if method not in efcomm.METHODS:
        raise argparse.ArgumentTypeError(f"hook {spec!r}: method {method!r} must be one of {sorted(efcomm.METHODS)}")
    if name not in COMPRESSORS:
        raise argparse.ArgumentTypeError(f"hook {spec!r}: compressor {name!r} must be one of {sorted(COMPRESSORS)}")
    flags = [p for p in rest if p in ("threshold", "scaled", "side", "compact", *BITS_FLAGS)]
    values = [p for p in rest if p not in flags]
    if values and name not in WITH_RATIO:
        raise argparse.ArgumentTypeError(f"hook {spec!r}: {name} takes no ratio (got {values[0]!r})")
    if len(values) > 1 or len(set(flags)) != len(flags):
        raise argparse.ArgumentTypeError(f"hook {spec!r}: expected at most one ratio and each flag once")
    for flag in ("threshold", "compact"):
        if flag in flags and name != "topk":
            raise argparse.ArgumentTypeError(f"hook {spec!r}: the {flag} flag applies to topk only")
    bits = [BITS_FLAGS[f] for f in flags if f in BITS_FLAGS]
    if bits and (name != "chunk" or len(bits) > 1):
        raise argparse.ArgumentTypeError(f"hook {spec!r}: one of {sorted(BITS_FLAGS)}, for chunk only")
    options = {"bits": bits[0]} if bits else {}
    if name in WITH_RATIO:
        options["ratio"] = _ratio(values[0], spec) if values else 0.01
    if "threshold" in flags:
        options["threshold"] = True
    if "compact" in flags:
        options.update(value_dtype=torch.bfloat16, index_bits=16)
    compressor = COMPRESSORS[name](**options)
    if "scaled" in flags:
        compressor = compressor.scaled()
    try:
        efcomm.EFState(method, compressor)  # the method's own checks (e.g. ef21 with a biased compressor)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"hook {spec!r}: {e}") from e
    return HookSpec(spec, "efcomm", ALL_GATHER, method=method, compressor=compressor, side_stream="side" in flags)


def one_bucket_at_a_time(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's powerSGD_hook, finished before DDP hands over the next bucket (for gloo)."""
    future = powerSGD_hook.powerSGD_hook(state, bucket)
    future.wait()
    return future


class ByteMeter:
    """Registers a hook on a DDP model and reports its bytes per step over the measured steps
    (call :meth:`start` after the warm-up)."""

    def __init__(self, spec: HookSpec, ddp: DistributedDataParallel):
        self.spec = spec
        params = [p for p in ddp.module.parameters() if p.requires_grad]
        self.dense_numel = sum(p.numel() for p in params)
        self.element_size = params[0].element_size()
        self.state = None
        self.note = ""  # how the hook ran, when not as torch or efcomm ship it
        group = ddp.process_group
        if spec.kind == "fp16":
            ddp.register_comm_hook(group, default_hooks.fp16_compress_hook)
        elif spec.kind == "bf16":
            ddp.register_comm_hook(group, default_hooks.bf16_compress_hook)
        elif spec.kind == "powersgd":
            self.state = powerSGD_hook.PowerSGDState(
                group, matrix_approximation_rank=spec.powersgd_rank, start_powerSGD_iter=POWERSGD_START
            )
            serialize = dist.get_backend(group) == dist.Backend.GLOO
            self.note = "one bucket at a time on gloo (see benchmarks/ddp_hooks.py)" if serialize else ""
            ddp.register_comm_hook(self.state, one_bucket_at_a_time if serialize else powerSGD_hook.powerSGD_hook)
        elif spec.kind == "efcomm":
            self.state = efcomm.register(ddp, spec.method, spec.compressor, side_stream=spec.side_stream)
        self._start = 0

    @property
    def dense_bytes(self) -> int:
        """DDP's all-reduce payload per step: the gradient's bytes."""
        return self.dense_numel * self.element_size

    def start(self) -> None:
        if self.spec.kind == "powersgd":
            self._start = self.state.total_numel_after_compression
        elif self.spec.kind == "efcomm":
            self._start = len(self.state.stats.history)

    def bytes_per_step(self, steps: int) -> float:
        kind = self.spec.kind
        if kind == "allreduce":
            return float(self.dense_bytes)
        if kind in ("fp16", "bf16"):
            return float(self.dense_numel * 2)
        if kind == "powersgd":
            return (self.state.total_numel_after_compression - self._start) * self.element_size / steps
        history = self.state.stats.history[self._start :]
        if len(history) != steps:
            raise RuntimeError(f"bench_ddp: efcomm recorded {len(history)} steps where {steps} were measured")
        return sum(entry["bytes_sent"] for entry in history) / steps
