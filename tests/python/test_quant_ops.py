"""The quantizer and Rand-k ops: the wire layout against an independent unpacker, non-finite
blocks and arbitrary headers, stochastic rounding streams, Rand-k's indices (uniform, distinct,
shared or per rank, O(k) work), opcheck, bad arguments, and CUDA/CPU parity (skipped without a
GPU)."""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from conftest import DEVICES, DTYPES, requires_cuda
from reference import unpack

from efcomm import ops


def _x(seed=0, d=1000):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.1, 3.0, d)


def _quantize(x, scheme, levels, block, stochastic, seed=0, step=0, bucket=0, rank=0):
    return ops.quant_encode_(x, None, scheme, levels, block, stochastic, seed, step, bucket, rank)


def _decoded(message, x, scheme, levels, block):
    out = torch.zeros_like(x)
    ops.quant_decode_add_(out, message.unsqueeze(0), scheme, levels, block)
    return out


# ---- the wire layout, read by an independent unpacker ----


def _unpack_codes(message: torch.Tensor, numel: int, bits: int, block: int):
    """Headers and codes by the layout of kernels/wire_layout.h: per block a 4-byte header,
    then each block's region of block * bits / 32 little-endian words."""
    raw = message.numpy()
    nblocks = -(-numel // block)
    headers = raw[: 4 * nblocks].view(np.uint32)
    stream = np.unpackbits(raw[4 * nblocks :], bitorder="little")
    region = block * bits
    codes = []
    for i in range(numel):
        b, e = divmod(i, block)
        chunk = stream[b * region + e * bits : b * region + (e + 1) * bits]
        codes.append(int(sum(int(v) << k for k, v in enumerate(chunk))))
    return headers, np.array(codes)


@pytest.mark.parametrize("levels,bits", [(1, 2), (3, 3), (7, 4), (15, 5), (127, 8)])
def test_qsgd_codes_by_the_documented_layout(levels, bits):
    x = _x(6, 300)
    message = _quantize(x, "qsgd", levels, 128, True, seed=1)
    assert message.numel() == 4 * 3 + 3 * 128 * bits // 8
    assert message.numel() == ops.message_nbytes("quant", 300, x.dtype, scheme="qsgd", levels=levels, block=128)
    headers, codes = _unpack_codes(message, 300, bits, 128)
    norms = headers.view(np.float32)
    level_mask = (1 << (bits - 1)) - 1
    expected = []
    for i in range(300):
        level = codes[i] & level_mask
        sign = -1.0 if codes[i] >> (bits - 1) else 1.0
        assert level <= levels
        expected.append(sign * float(norms[i // 128]) * level / levels)
    decoded = _decoded(message, x, "qsgd", levels, 128)
    assert torch.allclose(decoded.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    # The norms are the blocks' L2 norms, and every level is one of the two around |x| s / norm.
    for b in range(3):
        assert math.isclose(norms[b], float(x[128 * b : 128 * (b + 1)].double().norm()), rel_tol=1e-6)
    t = x.abs().double() * levels / torch.tensor(np.repeat(norms, 128)[:300].astype(np.float64))
    assert torch.all((torch.tensor(codes & level_mask) - t).abs() < 1 + 1e-6)


def test_sign_int8_fp8_natural_codes_by_the_documented_layout():
    x = _x(7, 200)
    headers, codes = _unpack_codes(_quantize(x, "sign", 0, 64, False), 200, 1, 64)
    assert codes.tolist() == (x < 0).int().tolist()
    assert math.isclose(headers.view(np.float32)[0], float(x[:64].abs().sum()) / 64, rel_tol=1e-6)
    headers, codes = _unpack_codes(_quantize(x, "int8", 0, 64, False), 200, 8, 64)
    scale = headers.view(np.float32)
    expected = torch.round(x / torch.tensor(np.repeat(scale, 64)[:200])).to(torch.int8)
    assert codes.astype(np.uint8).view(np.int8).tolist() == expected.tolist()
    headers, codes = _unpack_codes(_quantize(x, "fp8", 0, 64, False), 200, 8, 64)
    scale = torch.tensor(np.repeat(headers.view(np.float32), 64)[:200])
    expected = (x / scale).to(torch.float8_e4m3fn).view(torch.uint8)  # PyTorch's own e4m3 rounding
    assert codes.tolist() == expected.tolist()
    headers, codes = _unpack_codes(_quantize(x, "natural", 0, 64, True, seed=2), 200, 8, 64)
    base = headers.view(np.int32)
    for i in range(200):
        exponent = int(base[i // 64]) + 1 - (codes[i] & 0x7F)
        low = math.floor(math.log2(abs(float(x[i]))))
        assert exponent in (low, low + 1)
        assert (codes[i] >> 7) == (1 if x[i] < 0 else 0)


@pytest.mark.parametrize("stochastic", [False, True])
def test_int4_codes_by_the_documented_layout(stochastic):
    """The block-scaled int4 scheme: scale = max|x| / 7 per block, codes round(x / scale) in
    [-7, 7] as 4-bit two's complement (nearest-even, or stochastic between the two neighbours,
    unbiased), two codes per byte, the low nibble first."""
    x = _x(8, 200)
    message = _quantize(x, "int4", 0, 64, stochastic, seed=3)
    assert message.numel() == 4 * 4 + 4 * 64 // 2
    assert message.numel() == ops.message_nbytes("quant", 200, x.dtype, scheme="int4", block=64)
    headers, codes = _unpack_codes(message, 200, 4, 64)
    scale = torch.tensor(np.repeat(headers.view(np.float32), 64)[:200])
    for b in range(4):
        assert headers.view(np.float32)[b] == np.float32(float(x[64 * b : 64 * (b + 1)].abs().max())) / np.float32(7)
    values = torch.tensor(np.where(codes >= 8, codes - 16, codes))
    assert int(values.abs().max()) == 7
    t = x / scale
    if stochastic:
        assert torch.all((values == torch.floor(t)) | (values == torch.ceil(t)))
        assert not torch.equal(values, torch.round(t).long())
    else:
        assert torch.equal(values, torch.round(t).long())
    assert torch.equal(_decoded(message, x, "int4", 0, 64), values.float() * scale)
    grid = torch.arange(-7, 8, dtype=torch.float32) * 0.25  # exact round trips on its grid
    for rounding in (False, True):
        assert torch.equal(_decoded(_quantize(grid, "int4", 0, 32, rounding), grid, "int4", 0, 32), grid)


def test_int4_stochastic_rounding_is_unbiased():
    """The mean of 4000 draws of each entry is within 5 standard errors of it."""
    x = torch.linspace(-1.0, 1.0, 64)
    draws = torch.stack([_decoded(_quantize(x, "int4", 0, 64, True, step=s), x, "int4", 0, 64) for s in range(4000)])
    spread = (1.0 / 7) / 2  # at most half a step of 1/7 per draw
    assert torch.all((draws.mean(0) - x).abs() <= 5 * spread / math.sqrt(4000))


@pytest.mark.parametrize("scheme", ["qsgd", "natural", "sign", "int8", "fp8", "int4"])
def test_non_finite_blocks_decode_non_finite(scheme):
    stochastic = scheme in ("qsgd", "natural")
    for bad in (float("nan"), float("inf")):
        x = torch.randn(256)
        x[200] = bad
        message = _quantize(x, scheme, 7, 128, stochastic)
        out = _decoded(message, x, scheme, 7, 128)
        assert not torch.isfinite(out[128:]).any()  # the block holding it
        assert torch.isfinite(out[:128]).all()  # the other block is untouched


def _with_header(message, bits):
    """The message with its first block's header set to these 32 bits."""
    out = message.clone()
    out[:4] = torch.tensor(list(bits.to_bytes(4, "little")), dtype=torch.uint8)
    return out


def test_arbitrary_headers_decode_by_the_codec():
    """A gathered row may hold any bits (a corrupt or foreign message): natural's exponent
    saturates instead of overflowing, scales may be subnormal, NaN or inf, and the decoded
    values follow the codec's rule for them."""
    x = torch.linspace(-1.0, 1.0, 64)
    natural = _quantize(x, "natural", 0, 64, True)
    codes = _unpack_codes(natural, 64, 8, 64)[1]
    huge = _decoded(_with_header(natural, 0x7FFFFFFF), x, "natural", 0, 64)
    assert all(v == 0 or math.isinf(v) for v in huge.tolist()) and (huge != 0).sum() == (codes & 0x7F != 0).sum()
    tiny = _decoded(_with_header(natural, 0x80000001), x, "natural", 0, 64)
    assert torch.equal(tiny, torch.zeros(64))
    int8 = _quantize(x, "int8", 0, 64, False)
    values = _unpack_codes(int8, 64, 8, 64)[1].astype(np.uint8).view(np.int8).astype(np.float32)
    subnormal = _decoded(_with_header(int8, 0x00000001), x, "int8", 0, 64)  # scale 2^-149
    assert subnormal.tolist() == (torch.tensor(values) * torch.tensor(2.0**-149)).tolist()
    assert torch.isnan(_decoded(_with_header(int8, 0x7FC00001), x, "int8", 0, 64)).all()


def test_stochastic_rounding_is_reproducible_and_rank_dependent():
    x = _x(8)
    args = ("qsgd", 3, 128, True)
    first = _quantize(x, *args, seed=11, step=4, bucket=2, rank=0)
    assert torch.equal(first, _quantize(x, *args, seed=11, step=4, bucket=2, rank=0))
    assert not torch.equal(first, _quantize(x, *args, seed=11, step=4, bucket=2, rank=1))
    assert not torch.equal(first, _quantize(x, *args, seed=11, step=5, bucket=2, rank=0))
    assert not torch.equal(first, _quantize(x, *args, seed=12, step=4, bucket=2, rank=0))


# ---- Rand-k ----


def test_randk_indices_shared_distinct_uniform_and_fresh_each_step():
    x = torch.zeros(5000)
    a = ops.randk_indices(x, 50, 3, 0, 9)
    assert a.dtype == torch.int64 and a.numel() == 50
    assert torch.equal(a, torch.unique(a))  # distinct and ascending
    assert torch.equal(a, ops.randk_indices(x, 50, 3, 0, 9))  # no rank in the key
    assert not torch.equal(a, ops.randk_indices(x, 50, 3, 1, 9))
    assert not torch.equal(a, ops.randk_indices(x, 50, 3, 0, 10))
    window = ops.randk_indices(x, 50, 3, 0, 9, True)
    assert torch.equal((window - window[0]) % 5000, torch.arange(50))
    # Uniform: each coordinate is kept with probability k/d (chi-square over 400 steps).
    for numel in (100, 1000):
        counts = torch.zeros(numel)
        for step in range(400):
            counts.index_add_(
                0, ops.randk_indices(torch.zeros(numel), numel // 10, 1, step, 0), torch.ones(numel // 10)
            )
        expected = 400 * 0.1
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        dof = numel - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof)  # P(chi2 beyond) < 1e-6 for these dof


@pytest.mark.parametrize("numel,k", [(5, 2), (10, 3), (3, 1), (17, 2)])
def test_randk_subsets_of_tiny_tensors_are_uniform(numel, k):
    """Every k-subset equally likely (a chi-square over all C(numel, k) subsets, 6000 steps): the
    Feistel network runs over at least 256 entries, so tiny tensors are not biased."""
    subsets = {s: 0 for s in itertools.combinations(range(numel), k)}
    steps = 6000
    for step in range(steps):
        subsets[tuple(ops.randk_indices(torch.zeros(numel), k, 5, step, 1).tolist())] += 1
    expected = steps / len(subsets)
    chi2 = sum((c - expected) ** 2 / expected for c in subsets.values())
    dof = len(subsets) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof) + 10, (chi2, dof)


def test_randk_indices_cost_k_not_numel():
    """k indices of a 2^31 - 1 entry tensor (an expanded view: no memory) in well under a second:
    the selection never draws or sorts numel keys."""
    x = torch.zeros(1).expand(2**31 - 1)
    start = time.perf_counter()
    indices = ops.randk_indices(x, 1000, 1, 2, 3)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(indices, torch.unique(indices)) and int(indices[-1]) < 2**31 - 1


def test_randk_per_rank_indices_are_independent_and_carried_in_the_topk_layout():
    x = _x(3, 500)
    k = 40
    shared = ops.randk_indices(x, k, 7, 1, 2)
    mine = [ops.randk_indices(x, k, 7, 1, 2, rank=r) for r in range(3)]
    assert all(torch.equal(m, torch.unique(m)) for m in mine)  # distinct and ascending
    assert not torch.equal(mine[0], mine[1]) and not torch.equal(mine[0], shared)
    for window in (False, True):
        message = ops.randk_encode_(x, None, k, 7, 1, 2, window, rank=1)
        assert message.numel() == ops.message_nbytes("topk", 500, x.dtype, k=k)
        values, indices = unpack(message, k, x.dtype)
        expected = ops.randk_indices(x, k, 7, 1, 2, window, rank=1)
        assert torch.equal(indices.long(), expected) and torch.equal(values, x[expected])
        h = torch.zeros(500)
        ops.topk_decode_add_(h, message[None], k)
        assert torch.equal(h[expected], x[expected]) and int((h != 0).sum()) <= k


def test_randk_window_wraps_around():
    x = torch.arange(10, dtype=torch.float32)
    wrapped = False
    for step in range(20):
        idx = ops.randk_indices(x, 7, 0, step, 0, True)
        assert torch.equal(idx, (idx[0] + torch.arange(7)) % 10)
        wrapped |= bool(idx[0] > 3)
        message = ops.randk_encode_(x, None, 7, 0, step, 0, True)
        assert torch.equal(message[:28].view(torch.float32), x[idx])
        ranked = ops.randk_indices(x, 7, 0, step, 0, True, rank=0).tolist()  # a window, ascending
        assert ranked == sorted(ranked) and any(sorted((o + t) % 10 for t in range(7)) == ranked for o in range(10))
    assert wrapped


def test_randk_decode_sums_rows_in_rank_order():
    x = [_x(s, 300).to(torch.bfloat16) for s in range(3)]
    gathered = torch.stack([ops.randk_encode_(v, None, 30, 2, 5, 1) for v in x])
    idx = ops.randk_indices(x[0], 30, 2, 5, 1)
    for weights, scale in ((None, 1.0), (torch.tensor([0.5, -1.0, 2.0]), 10.0)):
        out = torch.zeros(300, dtype=torch.bfloat16)
        ops.randk_decode_add_(out, gathered, 30, 2, 5, 1, False, scale, weights)
        acc = torch.zeros(30)
        for j in range(3):
            acc = acc + (x[j][idx].float() if weights is None else weights[j] * x[j][idx].float())
        c = (acc if weights is not None else acc * torch.tensor(1 / 3)) * torch.tensor(scale)
        expected = torch.zeros(300, dtype=torch.bfloat16)
        expected[idx] = c.to(torch.bfloat16)
        assert torch.equal(out, expected)


# ---- opcheck and error messages ----


def _samples(device):
    x = torch.randn(300, device=device)
    q = _quantize(x, "qsgd", 7, 128, True, 1, 2, 3, 4)
    r = ops.randk_encode_(x, None, 30, 1, 2, 3, False)
    weights = torch.tensor([0.25, 0.75], device=device)
    return [
        ("quant_encode_", (x, None, "qsgd", 7, 128, True, 1, 2, 3, 4)),
        ("quant_encode_", (x.half(), None, "fp8", 0, 64, False, 1, 2, 3, 0)),
        ("quant_encode_", (x, torch.zeros(300, device=device), "natural", 0, 64, True, 1, 2, 3, 4, 0.5)),
        ("quant_decode_add_", (torch.zeros(300, device=device), torch.stack([q, q]), "qsgd", 7, 128, 0.5, None)),
        ("quant_decode_add_", (torch.zeros(300, device=device), torch.stack([q, q]), "qsgd", 7, 128, 1.0, weights)),
        ("randk_indices", (x, 30, 1, 2, 3, True)),
        ("randk_indices", (x, 30, 1, 2, 3, False, 2)),
        ("randk_encode_", (x, None, 30, 1, 2, 3, False)),
        ("randk_encode_", (x, torch.zeros(300, device=device), 30, 1, 2, 3, True, 3.0)),
        ("randk_encode_", (x.bfloat16(), torch.zeros(300, device=device).bfloat16(), 30, 1, 2, 3, False, 1.0, 1)),
        ("randk_decode_add_", (torch.zeros(300, device=device), torch.stack([r, r]), 30, 1, 2, 3, False, 2.0, None)),
        ("randk_decode_add_", (torch.zeros(300, device=device), torch.stack([r, r]), 30, 1, 2, 3, False, 2.0, weights)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_quantizer_and_randk_ops(device):
    for name, args in _samples(device):
        torch.library.opcheck(getattr(torch.ops.efcomm, name).default, args)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (
            lambda: _quantize(torch.ones(64), "bits", 7, 64, True),
            r"quant_encode_: scheme \('bits'\) must be one of 'qsgd', 'natural', 'sign', 'int8', 'fp8', 'int4'",
        ),
        (lambda: _quantize(torch.ones(64), "qsgd", 7, 48, True), r"block \(48\)"),
        (lambda: _quantize(torch.ones(64), "qsgd", 0, 64, True), r"levels \(0\) must be in \[1, 127\] for qsgd"),
        (
            lambda: _quantize(torch.ones(64), "qsgd", 7, 64, False),
            r"stochastic \(false\) must be true for scheme 'qsgd'",
        ),
        (
            lambda: _quantize(torch.ones(64), "sign", 0, 64, True),
            r"stochastic \(true\) must be false for scheme 'sign'",
        ),
        (lambda: _quantize(torch.ones(64), "int8", 0, 64, True, 0, -1), r"step \(-1\)"),
        (lambda: _quantize(torch.ones(64), "int8", 0, 64, True, 0, 0, 0, -2), r"rank \(-2\)"),
        (lambda: _quantize(torch.ones(64, dtype=torch.int32), "int8", 0, 64, True), r"quant_encode_: a has dtype Int"),
        (
            lambda: ops.quant_encode_(torch.ones(64), torch.ones(32), "int8", 0, 64, False, 0, 0, 0, 0),
            r"quant_encode_: b has shape \[32\] but a has shape \[64\]",
        ),
        (
            lambda: ops.quant_encode_(torch.ones(64), None, "int8", 0, 64, False, 0, 0, 0, 0, float("inf")),
            r"scale \(inf\)",
        ),
        (
            lambda: ops.quant_decode_add_(torch.zeros(64), torch.zeros(2, 8, dtype=torch.uint8), "int8", 0, 64),
            r"gathered rows have 8 bytes.*68 bytes",
        ),
        (
            lambda: ops.quant_decode_add_(
                torch.zeros(64), torch.zeros(2, 68, dtype=torch.uint8), "int8", 0, 64, 1.0, torch.ones(1)
            ),
            r"weights has 1 entries",
        ),
        (
            lambda: ops.quant_decode_add_(
                torch.zeros(64), torch.zeros(1, 68, dtype=torch.uint8), "int8", 0, 64, float("inf")
            ),
            r"scale \(inf\)",
        ),
        (lambda: ops.randk_encode_(torch.ones(10), None, 11, 0, 0, 0), r"randk_encode_: k \(11\) exceeds"),
        (lambda: ops.randk_encode_(torch.ones(10), None, 0, 0, 0, 0), r"k \(0\) must be at least 1"),
        (
            lambda: ops.randk_encode_(torch.ones(10), None, 2, 0, 0, 0, rank=-1),
            r"randk_encode_: rank \(-1\) must be non-negative",
        ),
        (lambda: ops.randk_indices(torch.ones(10), 2, 0, -3, 0), r"randk_indices: step \(-3\) must be non-negative"),
        (
            lambda: ops.randk_decode_add_(torch.zeros(10), torch.zeros(1, 8, dtype=torch.uint8), 3, 0, 0, 0),
            r"Rand-k message of k=3",
        ),
        (lambda: ops.message_nbytes("quant", 0, torch.float32, scheme="int8", block=64), r"numel \(0\)"),
    ],
)
def test_bad_op_arguments_raise_errors_naming_them(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


# ---- CUDA against the CPU reference, bit for bit ----

SCHEMES = [
    ("qsgd", 1, True),
    ("qsgd", 7, True),
    ("qsgd", 127, True),
    ("natural", 0, True),
    ("sign", 0, False),
    ("int8", 0, False),
    ("int8", 0, True),
    ("fp8", 0, False),
    ("fp8", 0, True),
    ("int4", 0, False),
    ("int4", 0, True),
]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 769, 2**20 + 3])
@pytest.mark.parametrize("scheme,levels,stochastic", SCHEMES)
@pytest.mark.parametrize("block", [32, 512])
def test_cuda_quantize_and_decode_match_cpu_exactly(scheme, levels, stochastic, numel, dtype, block):
    """Encode, and the decode of real rows and of a byte-reversed one (arbitrary header bits:
    NaN, inf, subnormal scales), with and without weights and a scale."""
    x = (torch.randn(numel, generator=torch.Generator().manual_seed(numel)) * 3).to(dtype)
    if numel > 7:
        x[5] = 0.0
        x[6] = -x[6]
    args = (scheme, levels, block, stochastic, 123, 4, 5, 1)
    cpu = ops.quant_encode_(x, None, *args)
    assert torch.equal(ops.quant_encode_(x.cuda(), None, *args).cpu(), cpu)
    gathered = torch.stack(
        [cpu, ops.quant_encode_(x * 0.5, None, *args), ops.quant_encode_(-x, None, *args), cpu.flip(0)]
    )
    for weights, scale in ((None, 1.0), (torch.tensor([0.5, 0.25, -1.0, 2.0]), 0.75)):
        h = torch.randn(numel, generator=torch.Generator().manual_seed(1)).to(dtype)
        h_cuda = h.cuda()
        ops.quant_decode_add_(h, gathered, scheme, levels, block, scale, weights)
        ops.quant_decode_add_(
            h_cuda, gathered.cuda(), scheme, levels, block, scale, None if weights is None else weights.cuda()
        )
        assert torch.equal(h_cuda.cpu().view(torch.uint8), h.view(torch.uint8))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme,levels,stochastic", SCHEMES)
def test_cuda_quant_encode_with_state_matches_cpu_exactly(scheme, levels, stochastic, dtype):
    numel = 2**20 + 3
    g = torch.randn(numel, generator=torch.Generator().manual_seed(5)).to(dtype)
    h = torch.randn(numel, generator=torch.Generator().manual_seed(6)).to(dtype)
    h_gpu = h.cuda()
    args = (scheme, levels, 256, stochastic, 8, 1, 2, 3, 0.5)
    message = ops.quant_encode_(g, h, *args)
    assert torch.equal(ops.quant_encode_(g.cuda(), h_gpu, *args).cpu(), message)
    assert torch.equal(h_gpu.cpu(), h)


@requires_cuda
def test_cuda_quantize_non_finite_and_non_contiguous_match_cpu():
    x = torch.randn(64, 40)[:, ::2]  # non-contiguous, 1280 entries
    x[3, 4] = float("nan")
    x[20, 1] = float("inf")
    state = torch.randn(1280)
    state[700] = float("inf")
    for scheme, levels, stochastic in SCHEMES:
        args = (scheme, levels, 128, stochastic, 1, 0, 0, 0)
        assert torch.equal(ops.quant_encode_(x.cuda(), None, *args).cpu(), ops.quant_encode_(x, None, *args))
        cpu_state, gpu_state = state.view(64, 20).clone(), state.view(64, 20).cuda()
        assert torch.equal(ops.quant_encode_(x.cuda(), gpu_state, *args).cpu(), ops.quant_encode_(x, cpu_state, *args))
        assert torch.equal(gpu_state.cpu().view(torch.uint8), cpu_state.view(torch.uint8))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 7), (769, 77), (2**20 + 3, 10486)])
@pytest.mark.parametrize("window", [False, True])
def test_cuda_randk_matches_cpu_exactly(numel, k, window, dtype):
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(dtype)
    args = (k, 77, 3, 2, window)
    for rank in (None, 3):
        assert torch.equal(ops.randk_indices(x.cuda(), *args, rank).cpu(), ops.randk_indices(x, *args, rank))
        message = ops.randk_encode_(x, None, *args, 1.0, rank)
        assert torch.equal(ops.randk_encode_(x.cuda(), None, *args, 1.0, rank).cpu(), message)
        state = torch.randn(numel, generator=torch.Generator().manual_seed(2)).to(dtype)
        state_gpu = state.cuda()
        fused = ops.randk_encode_(x, state, *args, 2.5, rank)
        assert torch.equal(ops.randk_encode_(x.cuda(), state_gpu, *args, 2.5, rank).cpu(), fused)
        assert torch.equal(state_gpu.cpu(), state)
    message = ops.randk_encode_(x, None, *args)
    gathered = torch.stack([message, ops.randk_encode_(-2 * x, None, *args)])
    h = torch.zeros(numel, dtype=dtype)
    h_cuda = h.cuda()
    weights = torch.tensor([0.5, 0.5])
    ops.randk_decode_add_(h, gathered, *args, 1.5, weights)
    ops.randk_decode_add_(h_cuda, gathered.cuda(), *args, 1.5, weights.cuda())
    assert torch.equal(h_cuda.cpu(), h)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [32, 96, 160])
def test_cuda_quantize_unaligned_views_and_partial_sweeps_match_cpu(block, dtype):
    """The kernels' other paths: tensors that start off a 16-byte boundary (one access per entry
    instead of vectors), blocks that are not a multiple of a warp's 128-entry sweep, and a last
    block cut short by the tensor's end."""
    numel = 4 * block + 37
    gen = torch.Generator().manual_seed(block)
    base = (torch.randn(numel + 1, generator=gen) * 3).to(dtype)
    x, x_gpu = base[1:], base.cuda()[1:]  # contiguous, one entry past an aligned start
    for scheme, levels, stochastic in SCHEMES:
        args = (scheme, levels, block, stochastic, 5, 6, 7, 1)
        message = ops.quant_encode_(x, None, *args)
        assert torch.equal(ops.quant_encode_(x_gpu, None, *args).cpu(), message), scheme
        state = torch.randn(numel + 1, generator=gen).to(dtype)
        state_gpu = state.cuda()
        fused = ops.quant_encode_(x, state[1:], *args, 0.5)
        assert torch.equal(ops.quant_encode_(x_gpu, state_gpu[1:], *args, 0.5).cpu(), fused), scheme
        assert torch.equal(state_gpu.cpu().view(torch.uint8), state.view(torch.uint8)), scheme
        h = torch.randn(numel + 1, generator=gen).to(dtype)
        h_gpu = h.cuda()
        gathered = torch.stack([message, fused])
        ops.quant_decode_add_(h[1:], gathered, scheme, levels, block, 0.75)
        ops.quant_decode_add_(h_gpu[1:], gathered.cuda(), scheme, levels, block, 0.75)
        assert torch.equal(h_gpu.cpu().view(torch.uint8), h.view(torch.uint8)), scheme
