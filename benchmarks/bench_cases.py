"""The cases benchmarks/bench_ops.py times: per op, the efcomm call, the PyTorch composition that
does the same work, the bytes the op must move at least (its bound), and extras.

Extras: "cub" (the CUB DeviceTopK baseline's fn), "quality" (the fraction of the exact Top-k
energy a hinted selection keeps), "hint" (threshold Top-k's, to report fallbacks), "bits" (wire
bits per entry), "sync_free" (whether the op is meant to run without a host synchronisation:
every op but the Top-k ones on today's default select, which reads a count on the host)."""

import os
from typing import Callable, NamedTuple, Optional

import torch

from efcomm import ops

SECTOR = 32  # bytes: the granularity at which a GPU's memory moves data


class Case(NamedTuple):
    name: str
    fn: Callable
    baseline: Callable
    bound_bytes: int
    extras: dict


def with_select(select: Optional[str], fn: Callable) -> Callable:
    """fn run with EFCOMM_TOPK_SELECT=select (the CUDA ops read it on every call); None: the
    default."""
    if select is None:
        return fn

    def run():
        before = os.environ.get("EFCOMM_TOPK_SELECT")
        os.environ["EFCOMM_TOPK_SELECT"] = select
        try:
            return fn()
        finally:
            if before is None:
                os.environ.pop("EFCOMM_TOPK_SELECT", None)
            else:
                os.environ["EFCOMM_TOPK_SELECT"] = before

    return run


def _suffix(select: Optional[str]) -> str:
    return "" if select is None else f"_{select}"


def topk_cases(numel: int, k: int, dtype: torch.dtype, device: torch.device, world: int, cub=None):
    """Top-k, the EF21 encode, their threshold forms, for today's default select, the sync-free
    one (radix2) and the sort path (topk only); and the decode of `world` messages."""
    es = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator(device=device).manual_seed(0)
    g = torch.randn(numel, device=device, generator=gen).to(dtype)
    h_local = torch.randn(numel, device=device, generator=gen).to(dtype)
    # The timed in-place encodes move their state towards g (after about 1/ratio calls g - h is
    # all zeros): each timed encode has its own copy, and the hinted quality starts from h_start.
    h_start = h_local.clone()
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

    cub_topk = cub_encode = None
    if cub is not None and dtype == torch.float32 and device.type == "cuda":
        cub_topk = lambda: cub.topk(g, k)  # noqa: E731
        cub_h = h_local.clone()
        cub_encode = lambda: cub.ef21_encode(g, cub_h, k)  # noqa: E731
    values = lambda m: m[: k * es].view(dtype).double()  # noqa: E731
    topk_bound, encode_bound = numel * es + out, 2 * numel * es + out + 2 * k * es
    for select in (None, "radix2"):
        sync_free = select is not None
        name = _suffix(select)
        yield Case(
            f"topk{name}",
            with_select(select, lambda: ops.topk(g, k)),
            torch_topk,
            topk_bound,
            {"cub": cub_topk, "sync_free": sync_free},
        )
        if select is None:  # the CUDA selection the radix select replaced (a stable sort)
            yield Case(
                "topk_sort_path",
                with_select("sort", lambda: ops.topk(g, k)),
                torch_topk,
                topk_bound,
                {"sync_free": False},
            )
        h_timed = h_start.clone()
        yield Case(
            f"ef21_encode{name}",
            with_select(select, lambda h=h_timed: ops.topk_encode_(g, h, k)),
            torch_encode,
            encode_bound,
            {"cub": cub_encode, "sync_free": sync_free},
        )
        # Threshold Top-k: the hint primed by one call, then one read of the input per call while
        # between k and 4k entries reach it (else the exact fallback, reported).
        hint = ops.topk_threshold_hint(device)
        exact_values = ops.topk(g, k)[0]
        hinted_values = with_select(select, lambda: ops.topk(g, k, hint))()[0]
        quality = float(hinted_values.double().square().sum() / exact_values.double().square().sum())
        yield Case(
            f"topk_threshold{name}",
            with_select(select, lambda t=hint: ops.topk(g, k, t)),
            torch_topk,
            topk_bound,
            {"quality": quality, "hint": hint, "sync_free": sync_free},
        )
        encode_hint = ops.topk_threshold_hint(device)
        with_select(select, lambda: ops.topk_encode_(g, h_start.clone(), k, threshold=encode_hint))()  # primes it
        exact_message = ops.topk_encode_(g, h_start.clone(), k)
        hinted_message = with_select(
            select, lambda: ops.topk_encode_(g, h_start.clone(), k, threshold=encode_hint.clone())
        )()
        encode_quality = float(values(hinted_message).square().sum() / values(exact_message).square().sum())
        h_hinted = h_start.clone()
        yield Case(
            f"ef21_encode_threshold{name}",
            with_select(select, lambda t=encode_hint, h=h_hinted: ops.topk_encode_(g, h, k, threshold=t)),
            torch_encode,
            encode_bound,
            {"quality": encode_quality, "hint": encode_hint, "sync_free": sync_free},
        )
    yield decode_case(numel, k, dtype, device, world, gen, h_start)


def decode_case(numel, k, dtype, device, world, gen, h_local):
    """The decode of `world` messages of different gradients (their indices overlap as they happen
    to). Bound: every message read once, and h read and written once in each 32-byte sector that
    holds an entry some message names (a GPU moves whole sectors; "entry_bound" counts the named
    entries alone)."""
    es = torch.empty((), dtype=dtype).element_size()
    gathered = torch.stack(
        [
            ops.topk_encode_(torch.randn(numel, device=device, generator=gen).to(dtype), h_local.clone(), k)
            for _ in range(world)
        ]
    )
    indices = gathered[:, -4 * k :].contiguous().view(torch.int32).long()
    named = torch.unique(indices).numel()
    sectors = torch.unique(indices // (SECTOR // es)).numel()
    h = torch.zeros(numel, device=device, dtype=dtype)

    def torch_decode():
        for j in range(world):
            v, i = gathered[j, : k * es].view(dtype), gathered[j, -4 * k :].view(torch.int32)
            h.index_add_(0, i.long(), v, alpha=1.0 / world)

    return Case(
        f"decode_n{world}",
        lambda: ops.topk_decode_add_(h, gathered, k),
        torch_decode,
        gathered.numel() + 2 * SECTOR * sectors,
        {"entry_bound": gathered.numel() + 2 * named * es, "sync_free": True},
    )


def randk_cases(numel: int, k: int, dtype: torch.dtype, device: torch.device):
    """Rand-k encode: the window form moves only the k values (launch-bound); the uniform form
    also computes and sorts k keys (kernels/randk_rule.h)."""
    es = torch.empty((), dtype=dtype).element_size()
    g = torch.randn(numel, device=device).to(dtype)

    def torch_randk():
        idx = torch.randperm(numel, device=device)[:k]
        return g[idx]

    bits = 8 * k * es / numel
    yield Case(
        "randk_window",
        lambda: ops.randk_encode_(g, None, k, 0, 0, 0, True),
        torch_randk,
        2 * k * es,
        {"bits": bits, "sync_free": True},
    )
    yield Case(
        "randk_uniform",
        lambda: ops.randk_encode_(g, None, k, 0, 0, 0, False),
        torch_randk,
        2 * k * es,
        {"bits": bits, "sync_free": True},
    )


# name, scheme, levels, block, stochastic
QUANTIZERS = [
    ("qsgd4", "qsgd", 7, 512, True),
    ("natural", "natural", 0, 1024, True),
    ("sign", "sign", 0, 1024, False),
    ("int8", "int8", 0, 256, False),
    ("fp8", "fp8", 0, 256, False),
    ("int4", "int4", 0, 256, False),
]


def _torch_quantize(padded, scheme, levels):
    """A PyTorch composition of the same rounding, without bit packing: (codes, scales)."""
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
    top = {"int8": 127.0, "int4": 7.0, "fp8": 448.0}[scheme]
    scale = padded.abs().amax(dim=1, keepdim=True) / top
    q = padded / scale
    return (q.to(torch.float8_e4m3fn) if scheme == "fp8" else q.round().to(torch.int8)), scale


def quant_cases(numel: int, dtype: torch.dtype, device: torch.device, world: int):
    """Per quantizer: its encode, its EF21 encode (with the state: read g and h, write h), and the
    decode of `world` messages; the baselines are PyTorch compositions of the same rounding."""
    es = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator(device=device).manual_seed(0)
    g = torch.randn(numel, device=device, generator=gen).to(dtype)
    h = torch.zeros(numel, device=device, dtype=dtype)
    torch_state = torch.zeros_like(g)
    for name, scheme, levels, block, stochastic in QUANTIZERS:
        args = (scheme, levels, block, stochastic, 0, 0, 0, 0)
        message = ops.quant_encode_(g, None, *args)
        gathered = message.unsqueeze(0).repeat(world, 1)
        nbytes = message.numel()
        padded = torch.nn.functional.pad(g.float(), (0, -numel % block)).view(-1, block)
        torch_encode = lambda p=padded, s=scheme, lv=levels: _torch_quantize(p, s, lv)  # noqa: E731

        def torch_ef21(s=scheme, lv=levels, b=block):
            d = torch.nn.functional.pad((g - torch_state).float(), (0, -numel % b)).view(-1, b)
            codes, scale = _torch_quantize(d, s, lv)
            torch_state.add_(g)  # stands in for adding the decoded message
            return codes, scale

        def torch_decode(codes=torch_encode(), scheme=scheme, p=padded):
            values, scale = codes
            acc = torch.zeros_like(p)
            for _ in range(world):
                acc += values.float() * scale if scheme != "sign" else (1 - 2 * values.float()) * scale.unsqueeze(1)
            h.add_((acc / world).view(-1)[:numel].to(dtype))

        extras = {"bits": 8 * nbytes / numel, "sync_free": True}
        state = torch.zeros_like(g)
        yield Case(
            f"{name}_encode", lambda a=args: ops.quant_encode_(g, None, *a), torch_encode, numel * es + nbytes, extras
        )
        yield Case(
            f"{name}_ef21",
            lambda a=args, s=state: ops.quant_encode_(g, s, *a),
            torch_ef21,
            3 * numel * es + nbytes,
            extras,
        )
        yield Case(
            f"{name}_decode_n{world}",
            lambda gathered=gathered, a=args: ops.quant_decode_add_(h, gathered, *a[:3]),
            torch_decode,
            world * nbytes + 2 * numel * es,
            extras,
        )
