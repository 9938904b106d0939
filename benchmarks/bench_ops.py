"""Times efcomm's ops beside their PyTorch baselines and against the bytes they must move.

    python benchmarks/bench_ops.py                      # GPU if there is one, else CPU
    python benchmarks/bench_ops.py --sizes 1e6 1e7 1e8 --ratios 0.001 0.01 0.1 --dtypes float32 bfloat16
    python benchmarks/bench_ops.py --check-sync         # also run each op under set_sync_debug_mode("error")
    python benchmarks/bench_ops.py --device cpu --sizes 1e4 --min-run-time 0.01   # a functional run

For each (op, numel, k/d, dtype) it prints the median time, the bytes the op must move at least
(its bound), the bandwidth that implies, the fraction of the copy bandwidth measured in the same
run, the time of a copy of the input's bytes and the op's time against it, the GPU operations one
call launches (kernels, memsets and copies, counted with torch.profiler), and the time of the
PyTorch composition that does the same work. Top-k rows come for today's default select, the
sync-free select (suffix _radix2, EFCOMM_TOPK_SELECT=radix2) and the sort path. The quantizers
(QSGD 4-bit, natural, scaled sign, int8, fp8, int4: encode, EF21 encode with its state, and the
decode of --world messages) and Rand-k give the bits per entry on the wire. Threshold Top-k rows
give the fraction of the exact Top-k energy they keep (quality) and whether the timed calls fell
back. On a GPU the DDP-bucket sizes (--bucket-sizes: 1,048,576 and 6,553,600 entries) run too.
With CCCL 3.2+ headers (``pip install nvidia-cuda-cccl``, or --cccl-include), the float32 Top-k
and EF21 encode rows also time cub::DeviceTopK on the same work (benchmarks/cub_topk.cu). The case
definitions are benchmarks/bench_cases.py. Results go to <out>/bench_ops.json and a plot to
<out>/bench_ops.png.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch
from bench_cases import quant_cases, randk_cases, topk_cases
from torch.utils.benchmark import Timer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUCKET_SIZES = [1_048_576, 6_553_600]  # a small DDP bucket and the default one (25 MB of float32)


def median_seconds(fn, min_run_time: float) -> float:
    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def copy_seconds(device: torch.device, nbytes: int, min_run_time: float) -> float:
    """Median time of a device-to-device copy of nbytes (read + write)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return median_seconds(lambda: dst.copy_(src), min_run_time)


def gpu_operations(fn, device: torch.device) -> Optional[int]:
    """Kernels, memsets and copies one call of fn puts on the GPU (torch.profiler); None on the CPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def synchronizes(fn) -> bool:
    """Whether one call of fn synchronises the host with the GPU (set_sync_debug_mode("error"))."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return False
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        return True
    finally:
        torch.cuda.set_sync_debug_mode(0)


def cccl_with_topk(path: Optional[str]) -> Optional[Path]:
    """The include directory of a CCCL with cub::DeviceTopK (3.2+): the given one, or that
    of an installed nvidia-cuda-cccl wheel; None when there is none."""
    candidates = [Path(path)] if path else []
    try:
        import nvidia  # namespace package of the NVIDIA wheels

        candidates += [Path(p) / "cu13" / "include" / "cccl" for p in nvidia.__path__]
    except ImportError:
        pass
    return next((c for c in candidates if (c / "cub" / "device" / "device_topk.cuh").exists()), None)


def build_cub_baseline(include: Path):
    """JIT-builds benchmarks/cub_topk.cu against those headers (first run: about a minute)."""
    from torch.utils.cpp_extension import load

    source = Path(__file__).with_name("cub_topk.cu")
    return load(
        name="efcomm_cub_topk",
        sources=[str(source)],
        extra_include_paths=[str(include)],
        extra_cuda_cflags=["--expt-relaxed-constexpr", "-std=c++17"],
        verbose=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=None,
        help="numel values (default: 1e6 1e7, plus 1e8 and 1e9 on GPU, memory permitting)",
    )
    parser.add_argument(
        "--bucket-sizes",
        type=float,
        nargs="*",
        default=None,
        help="DDP-bucket sizes run before --sizes (default on GPU: 1048576 6553600; none on CPU)",
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--world", type=int, default=8, help="messages summed by the decode benchmark")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument(
        "--check-sync",
        action="store_true",
        help="run each op once under torch.cuda.set_sync_debug_mode('error'); exit 1 when an op "
        "meant to be sync-free synchronised",
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--cccl-include",
        default=None,
        help="CCCL 3.2+ headers for the CUB DeviceTopK baseline (default: an installed nvidia-cuda-cccl wheel)",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.check_sync and device.type != "cuda":
        parser.error("--check-sync needs a CUDA device")
    sizes = [int(s) for s in (args.sizes or ([1e6, 1e7, 1e8, 1e9] if device.type == "cuda" else [1e6, 1e7]))]
    buckets = [
        int(s)
        for s in (BUCKET_SIZES if args.bucket_sizes is None and device.type == "cuda" else args.bucket_sizes or [])
    ]
    copy_bw = 2 * 256 * 2**20 / copy_seconds(device, 256 * 2**20, args.min_run_time)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; copy bandwidth {copy_bw / 1e9:.1f} GB/s (read + write of 256 MiB)")
    cub = None
    if device.type == "cuda":
        include = cccl_with_topk(args.cccl_include)
        if include is None:
            print(
                "CUB DeviceTopK baseline: skipped (no CCCL 3.2+ headers: pip install nvidia-cuda-cccl, or --cccl-include)"
            )
        else:
            cub = build_cub_baseline(include)
            print(f"CUB DeviceTopK baseline: built against {include}")
    print(
        "bound: the bytes the op must move at least; of copy: bound / time over the copy bandwidth; "
        "copy ms: a copy of the input's bytes; launches: GPU operations per call"
    )
    print(
        f"{'op':<28} {'numel':>11} {'k/d':>6} {'dtype':<9} {'efcomm ms':>10} {'bound MB':>9} {'GB/s':>7} "
        f"{'of copy':>8} {'copy ms':>8} {'x copy':>7} {'launches':>8} {'torch ms':>9} {'speedup':>8} "
        f"{'wire bits':>9} {'cub ms':>8} {'vs cub':>7} {'quality':>8} {'fallback':>8}"
        + (f" {'sync':>5}" if args.check_sync else "")
    )
    rows = []
    shared = {}  # baselines several rows share (the selects' rows): timed once per configuration

    def timed_once(fn):
        if id(fn) not in shared:
            shared[id(fn)] = (fn, median_seconds(fn, args.min_run_time))  # keeps fn alive: ids stay unique
        return shared[id(fn)][1]

    def measure(case, numel, ratio, dtype_name, copy_t):
        extras = case.extras
        t = median_seconds(case.fn, args.min_run_time)
        tb = timed_once(case.baseline)
        tc = timed_once(extras["cub"]) if extras.get("cub") is not None else None
        hint = extras.get("hint")
        fell_back = None if hint is None else bool(hint[1].item())  # after the timed calls
        launches = gpu_operations(case.fn, device)
        synced = synchronizes(case.fn) if args.check_sync else None
        nbytes, bits = case.bound_bytes, extras.get("bits")
        row = {
            "op": case.name,
            "numel": numel,
            "ratio": ratio,
            "dtype": dtype_name,
            "seconds": t,
            "bound_bytes": nbytes,
            "bandwidth": nbytes / t,
            "fraction_of_copy": nbytes / t / copy_bw,
            "copy_seconds": copy_t,
            "vs_copy": t / copy_t,
            "launches": launches,
            "torch_seconds": tb,
            "speedup_vs_torch": tb / t,
            "wire_bits_per_entry": bits,
            "cub_seconds": tc,
            "speedup_vs_cub": None if tc is None else tc / t,
            "selection_quality": extras.get("quality"),
            "threshold_fell_back": fell_back,
            "entry_bound_bytes": extras.get("entry_bound"),
            "synchronizes": synced,
            "meant_sync_free": extras.get("sync_free"),
        }
        rows.append(row)
        ratio_text = "-" if ratio is None else f"{ratio:g}"
        bits_text = "-" if bits is None else f"{bits:.3f}"
        cub_text = f"{'-':>8} {'-':>7}" if tc is None else f"{tc * 1e3:>8.3f} {tc / t:>6.2f}x"
        quality_text = "-" if extras.get("quality") is None else f"{extras['quality']:.4f}"
        fallback_text = "-" if fell_back is None else ("yes" if fell_back else "no")
        launches_text = "-" if launches is None else str(launches)
        sync_text = "" if synced is None else f" {'YES' if synced else 'no':>5}"
        print(
            f"{case.name:<28} {numel:>11,} {ratio_text:>6} {dtype_name:<9} {t * 1e3:>10.3f} {nbytes / 1e6:>9.2f} "
            f"{nbytes / t / 1e9:>7.2f} {row['fraction_of_copy']:>8.1%} {copy_t * 1e3:>8.3f} {t / copy_t:>6.2f}x "
            f"{launches_text:>8} {tb * 1e3:>9.3f} {tb / t:>7.2f}x {bits_text:>9} {cub_text} {quality_text:>8} "
            f"{fallback_text:>8}{sync_text}",
            flush=True,
        )

    for numel in buckets + sizes:
        if device.type == "cuda":
            # g, h, their copies and the baselines' temporaries: about 16 bucket-sized fp32
            # tensors at the largest k/d (an estimate, on the safe side)
            need, free = 16 * 4 * numel, torch.cuda.mem_get_info(device)[0]
            if need > free:
                print(f"numel {numel:,}: skipped (needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")
                continue
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            copy_t = copy_seconds(device, numel * torch.empty((), dtype=dtype).element_size(), args.min_run_time)
            for ratio in args.ratios:
                k = max(1, int(numel * ratio))
                shared.clear()
                for case in topk_cases(numel, k, dtype, device, args.world, cub):
                    measure(case, numel, ratio, dtype_name, copy_t)
                for case in randk_cases(numel, k, dtype, device):
                    measure(case, numel, ratio, dtype_name, copy_t)
            shared.clear()
            for case in quant_cases(numel, dtype, device, args.world):
                measure(case, numel, None, dtype_name, copy_t)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ops.json").write_text(json.dumps({"device": name, "copy_bandwidth": copy_bw, "rows": rows}, indent=1))
    plot(rows, name, out / "bench_ops.png")
    print(f"wrote {out / 'bench_ops.json'} and {out / 'bench_ops.png'}")
    if args.check_sync:
        synced = sorted({r["op"] for r in rows if r["synchronizes"]})
        broken = sorted({r["op"] for r in rows if r["synchronizes"] and r["meant_sync_free"]})
        print(
            f"ops that synchronised: {', '.join(synced) or 'none'}; of those meant to be sync-free: {', '.join(broken) or 'none'}"
        )
        if broken:
            sys.exit(1)


def plot(rows: list[dict], device_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    op_names = sorted({r["op"] for r in rows})
    columns = 4
    lines = -(-len(op_names) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4 * lines), squeeze=False)
    for ax in axes.flat[len(op_names) :]:
        ax.set_visible(False)
    for ax, op in zip(axes.flat, op_names):
        for ratio, dtype in sorted({(r["ratio"] or 0.0, r["dtype"]) for r in rows if r["op"] == op}):
            sel = [r for r in rows if r["op"] == op and (r["ratio"] or 0.0) == ratio and r["dtype"] == dtype]
            label = f"k/d={ratio:g} {dtype}" if ratio else dtype
            ax.plot([r["numel"] for r in sel], [r["fraction_of_copy"] for r in sel], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("numel")
        ax.set_ylabel("fraction of copy bandwidth")
        ax.set_title(op)
        ax.legend(fontsize=7)
    fig.suptitle(f"efcomm ops on {device_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
