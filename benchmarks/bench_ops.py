"""Times efcomm's ops beside their PyTorch baselines and against the bytes they must move.

    python benchmarks/bench_ops.py                      # GPU if there is one, else CPU
    python benchmarks/bench_ops.py --sizes 1e6 1e7 1e8 --ratios 0.001 0.01 0.1 --dtypes float32 bfloat16

For each (op, numel, k/d, dtype) it prints the median time, the bytes the op must move at
least (its bound), the bandwidth that implies, the fraction of the copy bandwidth measured
in the same run, and the time of the PyTorch composition that does the same work. The
quantizers (QSGD 4-bit, natural, scaled sign, int8, fp8: encode, and the decode of
--world messages) and Rand-k do not depend on k/d for the quantizers; their rows also give
the bits per entry on the wire. Threshold Top-k rows give the fraction of the exact Top-k
energy they keep (quality) and whether the timed calls fell back to two passes. On a GPU
with CCCL 3.2+ headers (``pip install nvidia-cuda-cccl``, or --cccl-include), the Top-k and
EF21 encode rows also time cub::DeviceTopK on the same work (benchmarks/cub_topk.cu, float32).
Results go to <out>/bench_ops.json and a plot to <out>/bench_ops.png.
"""
import argparse
import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch.utils.benchmark import Timer

from efcomm import ops

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def median_seconds(fn, min_run_time: float) -> float:
    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def copy_bandwidth(device: torch.device, nbytes: int, min_run_time: float) -> float:
    """Bytes per second of a device-to-device copy (read + write) of nbytes."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), min_run_time)


def _sort_path(fn):
    """fn run with EFCOMM_TOPK_SELECT=sort (the CUDA ops read it on every call)."""

    def run():
        os.environ["EFCOMM_TOPK_SELECT"] = "sort"
        try:
            return fn()
        finally:
            os.environ.pop("EFCOMM_TOPK_SELECT", None)

    return run


def cases(numel: int, k: int, dtype: torch.dtype, device: torch.device, world: int, cub=None):
    """(name, efcomm fn, baseline fn, bytes bound, extras) for one configuration; extras may
    hold "cub" (the CUB DeviceTopK baseline's fn), "quality" (the fraction of the exact
    Top-k energy the selection keeps) and "hint" (threshold Top-k's, to report fallbacks)."""
    es = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator(device=device).manual_seed(0)
    g = torch.randn(numel, device=device, generator=gen).to(dtype)
    h_local = torch.randn(numel, device=device, generator=gen).to(dtype)
    # The timed in-place encodes move h_local towards g (after about 1/ratio calls g - h_local
    # is all zeros): the hinted encode's quality and its timed state start from this copy.
    h_start = h_local.clone()
    # world messages of different gradients (their indices overlap as they happen to)
    gathered = torch.stack(
        [ops.topk_encode_(torch.randn(numel, device=device, generator=gen).to(dtype), h_local.clone(), k) for _ in range(world)]
    )
    named = torch.unique(gathered[:, -4 * k :].contiguous().view(torch.int32)).numel()
    h = torch.zeros(numel, device=device, dtype=dtype)
    out = k * (es + 4)

    def torch_topk():
        idx = torch.topk(g.abs(), k, sorted=False).indices
        return g[idx], idx

    def torch_encode():
        d = g - h_local
        idx = torch.topk(d.abs(), k, sorted=False).indices
        values = d[idx]
        h_local.index_add_(0, idx, values)
        return values, idx

    def torch_decode():
        for j in range(world):
            values, indices = gathered[j, : k * es].view(dtype), gathered[j, -4 * k :].view(torch.int32)
            h.index_add_(0, indices.long(), values, alpha=1.0 / world)

    cub_topk = cub_encode = None
    if cub is not None and dtype == torch.float32 and device.type == "cuda":
        cub_topk = lambda: cub.topk(g, k)  # noqa: E731
        cub_h = h_local.clone()
        cub_encode = lambda: cub.ef21_encode(g, cub_h, k)  # noqa: E731
    yield "topk", lambda: ops.topk(g, k), torch_topk, numel * es + out, {"cub": cub_topk}
    # The CUDA selection the radix select replaced (a stable sort), for comparison.
    yield "topk_sort_path", _sort_path(lambda: ops.topk(g, k)), torch_topk, numel * es + out, {}
    yield "ef21_encode", lambda: ops.topk_encode_(g, h_local, k), torch_encode, 2 * numel * es + out + 2 * k * es, {"cub": cub_encode}
    # Threshold Top-k: the hint primed by one call, then one pass over the input per call
    # while between k and 4k entries reach it (else the two-pass fallback, reported).
    hint = ops.topk_threshold_hint(device)
    exact_values = ops.topk(g, k)[0]
    hinted_values = ops.topk(g, k, hint)[0]
    quality = float(hinted_values.double().square().sum() / exact_values.double().square().sum())
    yield "topk_threshold", lambda: ops.topk(g, k, hint), torch_topk, numel * es + out, {"quality": quality, "hint": hint}
    encode_hint = ops.topk_threshold_hint(device)
    ops.topk_encode_(g, h_start.clone(), k, threshold=encode_hint)  # primes the hint
    exact_message = ops.topk_encode_(g, h_start.clone(), k)
    hinted_message = ops.topk_encode_(g, h_start.clone(), k, threshold=encode_hint.clone())
    values = lambda m: m[: k * es].view(dtype).double()  # noqa: E731
    encode_quality = float(values(hinted_message).square().sum() / values(exact_message).square().sum())
    h_hinted = h_start.clone()
    yield ("ef21_encode_threshold", lambda: ops.topk_encode_(g, h_hinted, k, threshold=encode_hint), torch_encode,
           2 * numel * es + out + 2 * k * es, {"quality": encode_quality, "hint": encode_hint})
    # bound: read every message once, read and write the entries of h they name
    yield f"decode_n{world}", lambda: ops.topk_decode_add_(h, gathered, k), torch_decode, gathered.numel() + 2 * named * es, {}


# name, scheme, levels, block, stochastic
QUANTIZERS = [
    ("qsgd4", "qsgd", 7, 512, True),
    ("natural", "natural", 0, 1024, True),
    ("sign", "sign", 0, 1024, False),
    ("int8", "int8", 0, 256, False),
    ("fp8", "fp8", 0, 256, False),
]


def quant_cases(numel: int, dtype: torch.dtype, device: torch.device, world: int):
    """(name, efcomm fn, baseline fn, bytes bound, wire bits per entry) per quantizer: the
    baselines are PyTorch compositions of the same rounding, without bit packing."""
    es = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator(device=device).manual_seed(0)
    g = torch.randn(numel, device=device, generator=gen).to(dtype)
    h = torch.zeros(numel, device=device, dtype=dtype)
    for name, scheme, levels, block, stochastic in QUANTIZERS:
        args = (scheme, levels, block, stochastic, 0, 0, 0, 0)
        message = ops.quant_encode_(g, None, *args)
        gathered = message.unsqueeze(0).repeat(world, 1)
        nbytes = message.numel()
        padded = torch.nn.functional.pad(g.float(), (0, -numel % block)).view(-1, block)

        def torch_encode(padded=padded, scheme=scheme, levels=levels):
            if scheme == "qsgd":
                norm = padded.norm(dim=1, keepdim=True)
                t = padded.abs() / norm * levels
                return (torch.floor(t + torch.rand_like(t)) * padded.sign()).to(torch.int8), norm
            if scheme == "natural":
                e = torch.floor(torch.log2(padded.abs()))
                low = torch.exp2(e)
                up = torch.rand_like(low) < (padded.abs() - low) / low
                return (e + up).to(torch.int8), padded.sign()
            if scheme == "sign":
                return padded.signbit(), padded.abs().mean(dim=1)
            top = 127.0 if scheme == "int8" else 448.0
            scale = padded.abs().amax(dim=1, keepdim=True) / top
            q = padded / scale
            return (q.round().to(torch.int8) if scheme == "int8" else q.to(torch.float8_e4m3fn)), scale

        def torch_decode(codes=torch_encode(), scheme=scheme):
            values, scale = codes
            acc = torch.zeros_like(padded)
            for _ in range(world):
                acc += values.float() * scale if scheme != "sign" else (1 - 2 * values.float()) * scale.unsqueeze(1)
            h.add_((acc / world).view(-1)[:numel].to(dtype))

        bits = 8 * nbytes / numel
        yield f"{name}_encode", (lambda a=args: ops.quant_encode_(g, None, *a)), torch_encode, numel * es + nbytes, bits
        decode = lambda gathered=gathered, a=args: ops.quant_decode_add_(h, gathered, *a[:3])  # noqa: E731
        yield f"{name}_decode_n{world}", decode, torch_decode, world * nbytes + 2 * numel * es, bits


def randk_cases(numel: int, k: int, dtype: torch.dtype, device: torch.device):
    """Rand-k encode: the window form moves only the k values (launch-bound); the uniform form
    also computes and sorts k keys (kernels/randk_rule.h)."""
    es = torch.empty((), dtype=dtype).element_size()
    g = torch.randn(numel, device=device).to(dtype)

    def torch_randk():
        idx = torch.randperm(numel, device=device)[:k]
        return g[idx]

    yield "randk_window", lambda: ops.randk_encode_(g, None, k, 0, 0, 0, True), torch_randk, 2 * k * es, None
    yield "randk_uniform", lambda: ops.randk_encode_(g, None, k, 0, 0, 0, False), torch_randk, 2 * k * es, None


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
    return load(name="efcomm_cub_topk", sources=[str(source)], extra_include_paths=[str(include)],
                extra_cuda_cflags=["--expt-relaxed-constexpr", "-std=c++17"], verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=None,
                        help="numel values (default: 1e6 1e7, plus 1e8 and 1e9 on GPU, memory permitting)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--world", type=int, default=8, help="messages summed by the decode benchmark")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cccl-include", default=None,
                        help="CCCL 3.2+ headers for the CUB DeviceTopK baseline (default: an installed nvidia-cuda-cccl wheel)")
    args = parser.parse_args()

    device = torch.device(args.device)
    sizes = [int(s) for s in (args.sizes or ([1e6, 1e7, 1e8, 1e9] if device.type == "cuda" else [1e6, 1e7]))]
    copy_bw = copy_bandwidth(device, 256 * 2**20, args.min_run_time)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; copy bandwidth {copy_bw / 1e9:.1f} GB/s (read + write of 256 MiB)")
    header = (f"{'op':<21} {'numel':>11} {'k/d':>6} {'dtype':<9} {'efcomm ms':>10} {'bound MB':>9} {'GB/s':>7} "
              f"{'of copy':>8} {'torch ms':>9} {'speedup':>8} {'wire bits':>9}")
    cub = None
    if device.type == "cuda":
        include = cccl_with_topk(args.cccl_include)
        if include is None:
            print("CUB DeviceTopK baseline: skipped (no CCCL 3.2+ headers: pip install nvidia-cuda-cccl, or --cccl-include)")
        else:
            cub = build_cub_baseline(include)
            print(f"CUB DeviceTopK baseline: built against {include}")
    header += f" {'cub ms':>8} {'vs cub':>7} {'quality':>8} {'fallback':>8}"
    print(header)
    rows = []

    def measure(op, fn, baseline, nbytes, bits, numel, ratio, dtype_name, extras=None):
        extras = extras or {}
        t = median_seconds(fn, args.min_run_time)
        tb = median_seconds(baseline, args.min_run_time)
        tc = median_seconds(extras["cub"], args.min_run_time) if extras.get("cub") is not None else None
        hint = extras.get("hint")
        fell_back = None if hint is None else bool(hint[1].item())  # after the timed calls
        row = {
            "op": op, "numel": numel, "ratio": ratio, "dtype": dtype_name, "seconds": t,
            "bound_bytes": nbytes, "bandwidth": nbytes / t, "fraction_of_copy": nbytes / t / copy_bw,
            "torch_seconds": tb, "speedup_vs_torch": tb / t, "wire_bits_per_entry": bits,
            "cub_seconds": tc, "speedup_vs_cub": None if tc is None else tc / t,
            "selection_quality": extras.get("quality"), "threshold_fell_back": fell_back,
        }
        rows.append(row)
        ratio_text = "-" if ratio is None else f"{ratio:g}"
        bits_text = "-" if bits is None else f"{bits:.3f}"
        cub_text = f"{'-':>8} {'-':>7}" if tc is None else f"{tc * 1e3:>8.3f} {tc / t:>6.2f}x"
        quality_text = "-" if extras.get("quality") is None else f"{extras['quality']:.4f}"
        fallback_text = "-" if fell_back is None else ("yes" if fell_back else "no")
        print(f"{op:<21} {numel:>11,} {ratio_text:>6} {dtype_name:<9} {t * 1e3:>10.3f} {nbytes / 1e6:>9.2f} "
              f"{nbytes / t / 1e9:>7.2f} {row['fraction_of_copy']:>8.1%} {tb * 1e3:>9.3f} {tb / t:>7.2f}x {bits_text:>9} "
              f"{cub_text} {quality_text:>8} {fallback_text:>8}")

    for numel in sizes:
        if device.type == "cuda":
            # g, h, their copies and the baselines' temporaries: about 16 bucket-sized fp32
            # tensors at the largest k/d (an estimate, on the safe side)
            need, free = 16 * 4 * numel, torch.cuda.mem_get_info(device)[0]
            if need > free:
                print(f"numel {numel:,}: skipped (needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")
                continue
        for ratio in args.ratios:
            k = max(1, int(numel * ratio))
            for dtype_name in args.dtypes:
                for op, fn, baseline, nbytes, extras in cases(numel, k, DTYPES[dtype_name], device, args.world, cub):
                    measure(op, fn, baseline, nbytes, None, numel, ratio, dtype_name, extras)
                for op, fn, baseline, nbytes, bits in randk_cases(numel, k, DTYPES[dtype_name], device):
                    measure(op, fn, baseline, nbytes, bits, numel, ratio, dtype_name)
        for dtype_name in args.dtypes:
            for op, fn, baseline, nbytes, bits in quant_cases(numel, DTYPES[dtype_name], device, args.world):
                measure(op, fn, baseline, nbytes, bits, numel, None, dtype_name)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ops.json").write_text(json.dumps({"device": name, "copy_bandwidth": copy_bw, "rows": rows}, indent=1))
    plot(rows, name, out / "bench_ops.png")
    print(f"wrote {out / 'bench_ops.json'} and {out / 'bench_ops.png'}")


def plot(rows: list[dict], device_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    op_names = sorted({r["op"] for r in rows})
    columns = 4
    lines = -(-len(op_names) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4 * lines), squeeze=False)
    for ax in axes.flat[len(op_names):]:
        ax.set_visible(False)
    for ax, op in zip(axes.flat, op_names):
        for (ratio, dtype) in sorted({(r["ratio"] or 0.0, r["dtype"]) for r in rows if r["op"] == op}):
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
