"""Chunked Top-k with few-bit values (SparseLoCo's compressor; kernels/chunk_topk_rule.h, layout in
kernels/wire_layout.h): the ops against an independent unpacker of the documented layout and a
brute-force reference, NaN and inf, the state update, the decode, opcheck, errors, the compressor's
bounds and its training with classic EF; CUDA parity (skipped without a GPU)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import DEVICES, DTYPES, requires_cuda
from reference import add_own, decode_add

import efcomm
from efcomm import ChunkTopK, Context, ops

F32 = torch.float32


# ---- an independent reading of the documented layout ----


def layout(numel: int, k: int, chunk: int, bits: int) -> dict:
    chunks = math.ceil(numel / chunk)
    field_bits = int(math.log2(chunk)) + bits
    lengths = [min(chunk, numel - c * chunk) for c in range(chunks)]
    kept = [min(k, n) for n in lengths]
    words_per_chunk = math.ceil(k * field_bits / 32)
    nbytes = 4 * chunks + 4 * (words_per_chunk * (chunks - 1) + math.ceil(kept[-1] * field_bits / 32))
    return dict(
        chunks=chunks,
        field_bits=field_bits,
        lengths=lengths,
        kept=kept,
        words_per_chunk=words_per_chunk,
        nbytes=nbytes,
    )


def unpack(message: torch.Tensor, numel: int, k: int, chunk: int, bits: int):
    """Per chunk: (scale as a float32 tensor, offsets, codes), read with Python integers: the
    region of chunk c is one little-endian bit string, field e at bits [e w, (e + 1) w), the
    offset in the low log2(chunk) bits, the code above."""
    lay = layout(numel, k, chunk, bits)
    raw = message.numpy().tobytes()
    assert len(raw) == lay["nbytes"]
    scales = torch.from_numpy(np.frombuffer(raw, dtype="<f4", count=lay["chunks"]).copy())
    w, offset_bits = lay["field_bits"], int(math.log2(chunk))
    out = []
    for c in range(lay["chunks"]):
        start = 4 * lay["chunks"] + 4 * lay["words_per_chunk"] * c
        words = math.ceil(lay["kept"][c] * w / 32)
        region = int.from_bytes(raw[start : start + 4 * words], "little")
        fields = [(region >> (e * w)) & ((1 << w) - 1) for e in range(lay["kept"][c])]
        assert region >> (lay["kept"][c] * w) == 0  # the padding is zero
        offsets = [f & ((1 << offset_bits) - 1) for f in fields]
        codes = [f >> offset_bits for f in fields]
        out.append((scales[c : c + 1], offsets, codes))
    return out


def decoded_pairs(message, numel, k, chunk, bits):
    """(values as float32, int64 indices) of a message: value = s * f32(f32(2q - L) / f32(L))."""
    L = 2**bits - 1
    values, indices = [], []
    for c, (s, offsets, codes) in enumerate(unpack(message, numel, k, chunk, bits)):
        q = torch.tensor(codes, dtype=F32)
        level = (q * 2.0 - L) / torch.tensor(float(L))
        values.append(s * level)
        indices.append(torch.tensor(offsets, dtype=torch.int64) + c * chunk)
    return torch.cat(values), torch.cat(indices)


# ---- a brute-force reference of the encode ----


def chunk_selection(d: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Ascending int64 indices of each chunk's min(k, length) entries of largest |d| (NaN first,
    ties to the lower index), from stable sorts of a [chunks, chunk] matrix."""
    numel = d.numel()
    chunks = math.ceil(numel / chunk)
    flat = torch.full((chunks * chunk,), float("nan")).float()
    flat[:numel] = d.float()
    mag = flat.abs().nan_to_num(nan=float("inf"))
    mag[numel:] = -1.0  # past the end: after everything
    nan = torch.isnan(flat)
    nan[numel:] = False
    mag, nan = mag.view(chunks, chunk), nan.view(chunks, chunk)
    order = torch.sort(mag, dim=1, stable=True, descending=True).indices
    nan_first = torch.sort(torch.gather(nan, 1, order).to(torch.int8), dim=1, stable=True, descending=True).indices
    order = torch.gather(order, 1, nan_first)
    picked = []
    for c in range(chunks):
        kept = min(k, min(chunk, numel - c * chunk))
        picked.append(torch.sort(order[c, :kept]).values + c * chunk)
    return torch.cat(picked)


def reference_message(d: torch.Tensor, k: int, chunk: int, bits: int):
    """(indices, scales, codes, decoded values) of the message of d by the documented rule."""
    L = 2**bits - 1
    idx = chunk_selection(d, k, chunk)
    x = d.float()[idx]
    chunk_of = idx // chunk
    chunks = math.ceil(d.numel() / chunk)
    scales = torch.zeros(chunks)
    for c in range(chunks):
        kept = x[chunk_of == c].abs()
        scales[c] = float("nan") if torch.isnan(kept).any() else kept.max()
    s = scales[chunk_of]
    half = torch.tensor(0.5 * L)
    t = torch.round((x / s + 1.0) * half)  # float32, one rounding per operation, ties to even
    codes = torch.where(torch.isnan(t), torch.zeros_like(t), t.clamp(0, L))
    special = ~(torch.isfinite(s) & (s > 0))
    codes = torch.where(special, torch.where(x < 0, 0.0, float(L)), codes).to(torch.int64)
    level = (codes.float() * 2.0 - L) / torch.tensor(float(L))
    return idx, scales, codes, s * level


SIZES = [1, 7, 4095, 4096, 4097, 769 * 13]
CONFIGS = [(1, 2), (82, 2), (82, 4), (4096, 2), (205, 8)]  # (k, bits) at chunk 4096


def _grad(numel: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=gen) * torch.linspace(0.1, 3.0, numel)
    return x.to(dtype)


def check_message(message, d, k, chunk, bits):
    idx, scales, codes, values = reference_message(d, k, chunk, bits)
    parts = unpack(message, d.numel(), k, chunk, bits)
    got_scales = torch.cat([p[0] for p in parts])
    assert torch.equal(got_scales.view(torch.int32), scales.view(torch.int32))  # NaN: the canonical one
    got_idx = torch.cat([torch.tensor(p[1], dtype=torch.int64) + c * chunk for c, p in enumerate(parts)])
    got_codes = torch.cat([torch.tensor(p[2], dtype=torch.int64) for p in parts])
    assert torch.equal(got_idx, idx)
    assert torch.equal(got_codes, codes)
    return idx, values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("k,bits", CONFIGS)
def test_encode_matches_the_reference_and_the_layout(numel, dtype, k, bits):
    g = _grad(numel, dtype, numel + k)
    message = ops.chunktopk_encode_(g, None, k, 4096, bits)
    assert message.numel() == layout(numel, k, 4096, bits)["nbytes"]
    assert message.numel() == ops.message_nbytes("chunktopk", numel, dtype, k=k, block=4096, bits=bits)
    check_message(message, g, k, 4096, bits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_of_a_million_entries_and_small_chunks(dtype):
    numel = 2**20 + 3
    g = _grad(numel, dtype, 1)
    check_message(ops.chunktopk_encode_(g, None, 82, 4096, 2), g, 82, 4096, 2)
    g = _grad(9_001, dtype, 2)
    for chunk, k in ((32, 3), (32, 32), (256, 17), (1024, 100)):
        check_message(ops.chunktopk_encode_(g, None, k, chunk, 4), g, k, chunk, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_encode_with_a_state_adds_the_decoded_message(dtype, bits):
    """chunktopk_encode_(a, b, scale): the message of T(a - b), and b += scale * C(d) at the kept
    entries, exactly as chunktopk_decode_add_(b, message[None], scale) adds."""
    numel, k = 4096 * 3 + 100, 82
    a = _grad(numel, dtype, 3)
    b = (_grad(numel, dtype, 4).float() * 0.5).to(dtype)
    d = (a.float() - b.float()).to(dtype)
    for scale in (1.0, -1.0, 0.3):
        state = b.clone()
        message = ops.chunktopk_encode_(a, state, k, 4096, bits, scale)
        assert torch.equal(message, ops.chunktopk_encode_(d, None, k, 4096, bits))
        idx, values = check_message(message, d, k, 4096, bits)
        expected = b.clone()
        expected[idx] = add_own(b[idx], values, scale)
        assert torch.equal(state, expected)
        composed = b.clone()
        ops.chunktopk_decode_add_(composed, message[None], k, 4096, bits, scale)
        assert torch.equal(state, composed)


def test_levels_and_rounding_are_the_documented_ones():
    # 2 bits: +-s, +-s/3; a value at s/3 or beyond 2s/3 lands on them; the largest entry is exact.
    x = torch.tensor([3.0, 1.0, 0.0, -1.0, -3.0, 2.1, -1.9, 0.4])
    values, indices = decoded_pairs(ops.chunktopk_encode_(x, None, 8, 32, 2), 8, 8, 32, 2)
    s = torch.tensor(3.0)
    third = (s * ((torch.tensor(4.0) - 3.0) / torch.tensor(3.0))).item()  # s * f32(f32(2q - L) / L), q = 2
    assert indices.tolist() == list(range(8))
    assert values.tolist() == [3.0, third, third, -third, -3.0, 3.0, -third, third]
    # 8 bits round to within s / 255
    y = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    values, indices = decoded_pairs(ops.chunktopk_encode_(y, None, 4096, 4096, 8), 4096, 4096, 4096, 8)
    assert (values - y[indices]).abs().max() <= y.abs().max() / 255 * (1 + 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_make_the_scale_non_finite_and_are_detected(dtype):
    numel = 3 * 4096
    x = _grad(numel, dtype, 5)
    x[10] = float("nan")  # chunk 0: NaN (with inf too)
    x[11] = float("inf")
    x[4096 + 7] = -float("inf")  # chunk 1: -inf only
    message = ops.chunktopk_encode_(x, None, 41, 4096, 2)
    scales = message[: 4 * 3].view(torch.int32).tolist()
    assert scales[0] == 0x7FC00000 and scales[1] == 0x7F800000  # the canonical NaN, +inf
    assert math.isfinite(message[8:12].view(F32).item())
    c = ChunkTopK(k=41)
    assert bool(c.nonfinite_in(message[None], numel, dtype))
    assert not bool(
        c.nonfinite_in(ops.chunktopk_encode_(_grad(numel, dtype, 6), None, 41, 4096, 2)[None], numel, dtype)
    )
    idx, _, codes, _ = reference_message(x, 41, 4096, 2)
    assert 10 in idx.tolist() and 11 in idx.tolist() and 4096 + 7 in idx.tolist()
    h = torch.zeros(numel, dtype=dtype)
    ops.chunktopk_decode_add_(h, message[None], 41, 4096, 2)
    assert torch.isnan(h[idx[idx < 4096]]).all()  # every kept entry of chunk 0
    assert torch.isinf(h[idx[(idx >= 4096) & (idx < 8192)]]).all()
    assert h[4096 + 7].item() == -float("inf")
    assert torch.isfinite(h[8192:]).all()
    # a NaN from inf - inf in the state update is canonical
    a = torch.full((64,), float("inf")).to(dtype)
    b = a.clone()
    ops.chunktopk_encode_(a, b, 4, 32, 2)
    assert torch.isnan(b[:4]).all()


def test_zero_chunks_send_zeros_and_exact_zeros_sit_on_the_smallest_positive_level():
    x = torch.zeros(100)
    x[40] = 6.0
    values, indices = decoded_pairs(ops.chunktopk_encode_(x, None, 3, 32, 2), 100, 3, 32, 2)
    assert indices.tolist() == [0, 1, 2, 32, 33, 40, 64, 65, 66, 96, 97, 98]
    two = (torch.tensor(6.0) * ((torch.tensor(4.0) - 3.0) / torch.tensor(3.0))).item()
    assert values.tolist() == [0.0] * 3 + [two, two, 6.0] + [0.0] * 6


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_sums_rows_in_rank_order_with_and_without_weights(dtype):
    numel, k, bits, world = 4096 * 2 + 1234, 60, 2, 3
    messages = [ops.chunktopk_encode_(_grad(numel, dtype, 10 + j), None, k, 4096, bits) for j in range(world)]
    pairs = [decoded_pairs(m, numel, k, 4096, bits) for m in messages]
    gathered = torch.stack(messages)
    weights = torch.tensor([0.5, 0.3, 0.2])
    for w, scale in ((None, 1.0), (weights, -0.5), (None, 0.25)):
        h = _grad(numel, dtype, 20)
        expected = decode_add(h, pairs, None if w is None else w.tolist(), scale)
        ops.chunktopk_decode_add_(h, gathered, k, 4096, bits, scale, w)
        assert torch.equal(h, expected)


def test_decode_rejects_offsets_out_of_order_or_range():
    message = ops.chunktopk_encode_(torch.arange(1.0, 41.0), None, 2, 32, 2)  # chunk 1 holds 8 entries
    bad = message.clone()
    region = bad[8:12].view(torch.int32)
    region.fill_(int(region.item()) & ~0x1F | 0x1F)  # field 0 of chunk 0: offset 31, then 31
    with pytest.raises(RuntimeError, match=r"message of rank 0 holds offset 31 in chunk 0 .* after offset 31"):
        ops.chunktopk_decode_add_(torch.zeros(40), bad[None], 2, 32, 2)
    bad = message.clone()
    bad[12:16].view(torch.int32).fill_(0x9)  # chunk 1 (8 entries): offsets 9 and 0
    with pytest.raises(RuntimeError, match=r"holds offset 9 in chunk 1 \(of 8 entries\)"):
        ops.chunktopk_decode_add_(torch.zeros(40), bad[None], 2, 32, 2)


def test_non_contiguous_input_is_read_in_index_order():
    x = _grad(2 * 5000, F32, 7)[::2]
    assert torch.equal(
        ops.chunktopk_encode_(x, None, 82, 4096, 2), ops.chunktopk_encode_(x.contiguous(), None, 82, 4096, 2)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        a = torch.randn(5000, generator=gen).to(dtype).to(device)
        b = torch.randn(5000, generator=gen).to(dtype).to(device)
        gathered = torch.stack(
            [ops.chunktopk_encode_(a, None, 82, 4096, 2), ops.chunktopk_encode_(b, None, 82, 4096, 2)]
        )
        weights = torch.tensor([0.75, 0.25], device=device)
        encode = torch.ops.efcomm.chunktopk_encode_.default
        decode = torch.ops.efcomm.chunktopk_decode_add_.default
        torch.library.opcheck(encode, (a, None, 82, 4096, 2))
        torch.library.opcheck(encode, (a, b.clone(), 7, 256, 4, 0.5))
        torch.library.opcheck(decode, (torch.zeros_like(a), gathered, 82, 4096, 2))
        torch.library.opcheck(decode, (torch.zeros_like(a), gathered, 82, 4096, 2, -1.0, weights))
    torch.library.opcheck(torch.ops.efcomm.message_nbytes.default, ("chunktopk", 5000, F32, 82, "", 0, 4096, 2))


def test_ops_trace_under_torch_compile():
    def step(g, e, h, k: int):
        message = ops.chunktopk_encode_(g, e, k, 4096, 2)
        ops.chunktopk_decode_add_(h, message.unsqueeze(0), k, 4096, 2, 0.5)
        return message

    g = torch.randn(5000)
    eager = (torch.zeros(5000), torch.zeros(5000))
    compiled = (torch.zeros(5000), torch.zeros(5000))
    expected = step(g, *eager, 82)
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(g, *compiled, 82)
    assert torch.equal(got, expected) and all(torch.equal(x, y) for x, y in zip(compiled, eager))


@pytest.mark.parametrize(
    "call,pattern",
    [
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), None, 0, 4096, 2),
            r"chunktopk_encode_: k \(0\) must be at least 1",
        ),
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), None, 5000, 4096, 2),
            r"chunktopk_encode_: k \(5000\) exceeds the chunk \(4096\)",
        ),
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), None, 2, 1000, 2),
            r"chunktopk_encode_: chunk \(1000\) must be a power of two in \[32, 4096\]",
        ),
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), None, 2, 8192, 2),
            r"chunk \(8192\) must be a power of two in \[32, 4096\]",
        ),
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), None, 2, 4096, 3),
            r"chunktopk_encode_: bits \(3\) must be 2, 4 or 8",
        ),
        (lambda: ops.chunktopk_encode_(torch.randn(0), None, 2, 4096, 2), r"chunktopk_encode_: a is empty"),
        (lambda: ops.chunktopk_encode_(torch.arange(8), None, 2, 4096, 2), r"chunktopk_encode_: a has dtype Long"),
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), torch.zeros(8, dtype=torch.half), 2, 4096, 2),
            r"chunktopk_encode_: b has dtype Half but a has dtype Float",
        ),
        (
            lambda: ops.chunktopk_encode_(torch.randn(8), torch.zeros(16)[::2], 2, 4096, 2),
            r"chunktopk_encode_: b \(updated in place\) must be contiguous",
        ),
        (
            lambda: ops.chunktopk_decode_add_(torch.zeros(8), torch.zeros(1, 12, dtype=torch.uint8), 2, 4096, 2),
            r"chunktopk_decode_add_: gathered rows have 12 bytes but a chunktopk message of 8 entries "
            r"\(k=2, chunk=4096, bits=2\) has 8 bytes",
        ),
        (
            lambda: ops.chunktopk_decode_add_(torch.zeros(8, dtype=torch.half), torch.zeros(1, 8), 2, 4096, 2),
            r"chunktopk_decode_add_: gathered has dtype Float; expected uint8",
        ),
        (
            lambda: ops.chunktopk_decode_add_(torch.zeros(16)[::2], torch.zeros(1, 8, dtype=torch.uint8), 2, 4096, 2),
            r"chunktopk_decode_add_: h \(updated in place\) must be contiguous",
        ),
        (
            lambda: ops.chunktopk_decode_add_(
                torch.zeros(8), torch.zeros(2, 8, dtype=torch.uint8), 2, 4096, 2, 1.0, torch.ones(3)
            ),
            r"weights has 3 entries but gathered holds 2 messages",
        ),
        (
            lambda: ops.message_nbytes("chunktopk", 10, F32, k=2, block=4096, bits=1),
            r"message_nbytes: bits \(1\) must be 2, 4 or 8",
        ),
    ],
)
def test_bad_arguments_raise_errors_naming_them(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


@requires_cuda
def test_device_mismatch_is_rejected():
    with pytest.raises(RuntimeError, match=r"chunktopk_encode_: b is on cpu but a is on cuda:0"):
        ops.chunktopk_encode_(torch.randn(8, device="cuda"), torch.zeros(8), 2, 4096, 2)
    with pytest.raises(RuntimeError, match=r"chunktopk_decode_add_: gathered is on cpu but h is on cuda:0"):
        ops.chunktopk_decode_add_(torch.zeros(8, device="cuda"), torch.zeros(1, 8, dtype=torch.uint8), 2, 4096, 2)


# ---- the compressor ----


def test_bytes_per_entry():
    numel = 4096 * 1000
    per_entry = {
        (ratio, bits): ChunkTopK(ratio, bits=bits).message_nbytes(numel, F32) / numel
        for ratio in (0.01, 0.02, 0.05)
        for bits in (2, 4)
    }
    assert per_entry[(0.02, 2)] == 148 / 4096  # 4 + 4 * ceil(82 * 14 / 32)
    assert per_entry[(0.01, 2)] == 76 / 4096 and per_entry[(0.05, 2)] == 364 / 4096
    assert per_entry[(0.01, 4)] == 88 / 4096 and per_entry[(0.02, 4)] == 168 / 4096
    assert per_entry[(0.05, 4)] == 416 / 4096
    compact = efcomm.TopK(0.02, value_dtype=torch.bfloat16, index_bits=16).message_nbytes(numel, F32) / numel
    assert per_entry[(0.02, 2)] < compact / 2  # more than twice the kept entries per byte
    # the message does not depend on the bucket's dtype
    assert ChunkTopK().message_nbytes(numel, torch.bfloat16) == ChunkTopK().message_nbytes(numel, F32)


def test_configuration():
    c = ChunkTopK()
    assert repr(c) == "ChunkTopK(ratio=0.02, k=None, bits=2, chunk=4096)"
    assert c.k_per_chunk() == 82 and ChunkTopK(0.01).k_per_chunk() == 41 and ChunkTopK(k=7).k_per_chunk() == 7
    assert dataclasses.replace(c, ratio=0.05).k_per_chunk() == 205  # a sparsity warm-up varies the ratio
    assert {ChunkTopK(), ChunkTopK()} == {ChunkTopK()}
    assert not c.unbiased and not c.contractive and c.bounded
    assert c.alpha(5) == pytest.approx(1 - 4 / 9)  # five entries, all kept: only the rounding errs
    assert ChunkTopK(k=9).contractive and not ChunkTopK(k=10).contractive
    assert ChunkTopK(k=225, bits=4).contractive and not ChunkTopK(k=226, bits=4).contractive
    assert ChunkTopK(k=4096, bits=8).contractive
    assert ChunkTopK(k=82, bits=4).alpha(4096 * 10) == pytest.approx(82 * (1 - 81 / 225) / 4096)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: ChunkTopK(ratio=0.0), r"ChunkTopK ratio \(0.0\)"),
        (lambda: ChunkTopK(k=0), r"ChunkTopK k \(0\)"),
        (lambda: ChunkTopK(k=5000), r"ChunkTopK k \(5000\) exceeds the chunk \(4096\)"),
        (lambda: ChunkTopK(bits=3), r"ChunkTopK bits \(3\) must be 2, 4 or 8"),
        (lambda: ChunkTopK(bits=True), r"ChunkTopK bits \(True\)"),
        (lambda: ChunkTopK(chunk=1000), r"ChunkTopK chunk \(1000\) must be a power of two in \[32, 4096\]"),
        (lambda: ChunkTopK(chunk=4096.0), r"ChunkTopK chunk \(4096.0\)"),
    ],
)
def test_bad_configurations_raise(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def _error_ratio(c, x):
    out = torch.zeros_like(x)
    c.decode_add_(out, c.encode_(x, None, Context())[None], Context())
    return float((out.double() - x.double()).square().sum() / x.double().square().sum())


@pytest.mark.parametrize(
    "c", [ChunkTopK(k=9, chunk=256), ChunkTopK(k=82, bits=4), ChunkTopK(k=300, bits=8, chunk=1024)], ids=repr
)
def test_contraction_within_alpha(c):
    d = 5000
    gen = torch.Generator().manual_seed(1)
    inputs = [
        torch.randn(d, generator=gen) * torch.linspace(0.1, 3.0, d),
        torch.ones(d),
        torch.zeros(d).index_fill_(0, torch.tensor([5]), -2.0),
        torch.randn(d, generator=gen) ** 3,
        torch.randn(d, generator=gen).abs() * 1e-3 + torch.zeros(d).index_fill_(0, torch.arange(0, d, 256), 1.0),
    ]
    for x in inputs:
        assert _error_ratio(c, x) <= (1 - c.alpha(d)) * (1 + 1e-6)


def test_the_error_is_bounded_where_it_is_not_contractive():
    """One large entry per chunk and tiny ones: each tiny kept entry is sent as s/3 (2 bits),
    the worst case of the bound (k - 1) / L^2 = 81 / 9."""
    c = ChunkTopK()
    x = torch.full((8192,), 1e-6)
    x[::4096] = 1.0
    ratio = _error_ratio(c, x)
    assert 8.9 < ratio <= c.error_bound(8192) * (1 + 1e-6)
    assert c.error_bound(8192) == pytest.approx(9.0)


def test_classic_ef_accepts_it_and_the_ef21_family_does_not():
    efcomm.EFState("ef", ChunkTopK())
    efcomm.EFState("ef21", ChunkTopK(k=100, bits=4))  # contractive: every method takes it
    with pytest.raises(ValueError, match=r"'ef21' needs a contractive compressor .*classic error feedback \('ef'\)"):
        efcomm.EFState("ef21", ChunkTopK())
    with pytest.raises(ValueError, match=r"needs an unbiased compressor"):
        efcomm.EFState("none", ChunkTopK())


def test_classic_ef_with_it_keeps_ranks_identical_and_resets_on_a_non_finite_step():
    from efcomm.cluster import Cluster, outputs_identical

    compressor = ChunkTopK()
    cluster = Cluster.create(2, "ef", compressor, min_compress_numel=1)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        grads = [torch.randn(50_000, generator=gen) for _ in range(2)]
        if step == 3:
            grads[1][123] = float("inf")
        outs = cluster.step_bucket(grads)
        assert outputs_identical(outs)
    assert all(s.stats.nonfinite_resets == 1 for s in cluster.states)
    assert cluster.states[0].stats.bytes_sent == 6 * compressor.message_nbytes(50_000, F32)


def test_classic_ef_with_it_trains_like_exact_averaging():
    from inprocess import run_local

    dense = run_local(2, 100, "dense", lr=0.05)
    results = run_local(2, 100, "ef", compressor=ChunkTopK(0.05), lr=0.05)
    for r in results[1:]:
        assert torch.equal(r.params, results[0].params)
    stats = results[0].stats
    assert stats["dense_bytes"] / stats["bytes_sent"] > 38.0  # when written: 40.3x, loss 0.74 (dense 0.63), 70% (73%)
    assert results[0].train_loss <= dense[0].train_loss + 0.25
    assert results[0].test_accuracy >= dense[0].test_accuracy - 0.08


# ---- CUDA ----


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", SIZES + [2**20 + 3])
@pytest.mark.parametrize("k,bits,chunk", [(1, 2, 4096), (82, 2, 4096), (82, 4, 4096), (4096, 8, 4096), (5, 2, 32)])
def test_cuda_matches_cpu_exactly(numel, dtype, k, bits, chunk):
    gen = torch.Generator().manual_seed(numel)
    a = _grad(numel, dtype, numel)
    if numel > 4096:
        a[numel // 2] = float("nan")
    b = torch.randn(numel, generator=gen).to(dtype)
    b[: min(numel, 50)] = a[: min(numel, 50)]  # zeros and ties
    b_cuda = b.cuda()
    msg_cpu = ops.chunktopk_encode_(a, b, k, chunk, bits, 0.5)
    msg_cuda = ops.chunktopk_encode_(a.cuda(), b_cuda, k, chunk, bits, 0.5)
    assert torch.equal(msg_cuda.cpu(), msg_cpu)
    assert torch.equal(b_cuda.cpu().view(torch.uint8), b.view(torch.uint8))
    gathered = torch.stack([msg_cpu, ops.chunktopk_encode_(a.flip(0), None, k, chunk, bits)])
    for weights in (None, torch.tensor([0.7, 0.3])):
        h = torch.randn(numel, generator=gen).to(dtype)
        h_cuda = h.cuda()
        ops.chunktopk_decode_add_(h, gathered, k, chunk, bits, -1.0, weights)
        w_cuda = None if weights is None else weights.cuda()
        ops.chunktopk_decode_add_(h_cuda, gathered.cuda(), k, chunk, bits, -1.0, w_cuda)
        assert torch.equal(h_cuda.cpu().view(torch.uint8), h.view(torch.uint8))


@requires_cuda
def test_cuda_ties_special_values_and_unaligned_views_match_cpu():
    x = torch.tensor([1.0, -1.0, 0.0, -0.0, 2.0, -2.0, float("inf"), 2.0] * 1000)
    for k in (1, 3, 100, 4096):
        assert torch.equal(
            ops.chunktopk_encode_(x.cuda(), None, k, 4096, 2).cpu(), ops.chunktopk_encode_(x, None, k, 4096, 2)
        )
    y = _grad(10_001, torch.bfloat16, 3)[1:]
    assert torch.equal(
        ops.chunktopk_encode_(y.cuda(), None, 82, 4096, 4).cpu(), ops.chunktopk_encode_(y, None, 82, 4096, 4)
    )


@requires_cuda
def test_cuda_decode_skips_a_malformed_chunk():
    message = ops.chunktopk_encode_(torch.arange(1.0, 41.0), None, 2, 32, 2)
    bad = message.clone()
    bad[12:16].view(torch.int32).fill_(0x9)  # chunk 1: offsets 9 (beyond its 8 entries) and 0
    h = torch.zeros(40, device="cuda")
    ops.chunktopk_decode_add_(h, bad[None].cuda(), 2, 32, 2)
    expected = torch.zeros(40)
    ops.chunktopk_decode_add_(expected, message[None], 2, 32, 2)
    expected[32:] = 0.0  # chunk 1 of the bad row: skipped
    assert torch.equal(h.cpu(), expected)
