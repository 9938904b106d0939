"""The compressors: statistics (unbiasedness, variance within omega, contraction within
alpha), the wire layout against an independent Python unpacker, exact round trips, Rand-k's
shared indices, the quantizer and Rand-k ops (opcheck, bad arguments, CPU/CUDA parity)."""
import math

import numpy as np
import pytest
import torch
from conftest import DTYPES, requires_cuda

import efcomm
from efcomm import FP8, QSGD, Context, Identity, Induced, Int8, Natural, RandK, ScaledSign, TopK, ops

D = 1000  # not a multiple of the blocks: the last block is partial

UNBIASED = [
    QSGD(levels=1, block=128),
    QSGD(levels=7, block=512),
    QSGD(levels=127, block=64),
    Natural(block=256),
    Int8(block=128, stochastic=True),
    FP8(block=128, stochastic=True),
    RandK(ratio=0.1, unbiased=True),
    RandK(ratio=0.1, unbiased=True, window=True),
    Induced(TopK(ratio=0.05), RandK(ratio=0.05, unbiased=True)),
    Induced(TopK(ratio=0.05), QSGD(levels=3, block=128)),
    Identity(),
]
CONTRACTIVE = [
    TopK(ratio=0.05),
    RandK(ratio=0.1),
    ScaledSign(block=128),
    Int8(block=256),
    FP8(block=256),
    Natural(block=256),
    QSGD(levels=7, block=512).scaled(),
    RandK(ratio=0.1, unbiased=True).scaled(),
    Induced(TopK(ratio=0.05), QSGD(levels=3, block=128)).scaled(),
]


def _x(seed=0, d=D):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.1, 3.0, d)


def _decoded(c, x, ctx):
    out = torch.zeros_like(x)
    c.decode_add_(out, c.encode(x, ctx).unsqueeze(0), ctx)
    return out


@pytest.mark.parametrize("c", UNBIASED, ids=repr)
def test_unbiased_mean_of_draws_converges_to_x(c):
    """Median of means: G = 111 groups of m draws; for an unbiased C each group mean M_g has
    E||M_g - x||^2 <= omega ||x||^2 / m, so P(||M_g - x||^2 > 4 omega ||x||^2 / m) <= 1/4 (Markov)
    and the median exceeds that bound with probability <= exp(-2 G (1/4)^2) < 1e-6 (Hoeffding)."""
    x = _x(1)
    omega = c.omega(D)
    if omega == 0.0:
        assert torch.equal(_decoded(c, x, Context()), x)
        return
    groups, m = 111, 40
    deviations = []
    for g in range(groups):
        messages = torch.stack([c.encode(x, Context(seed=7, step=g * m + t, bucket=3, rank=1)) for t in range(m)])
        mean = torch.zeros_like(x)
        if isinstance(c, (RandK, Induced)):  # the indices change with the step: decode one at a time
            for t in range(m):
                c.decode_add_(mean, messages[t : t + 1], Context(seed=7, step=g * m + t, bucket=3, rank=1), [1.0 / m])
        else:
            c.decode_add_(mean, messages, Context())  # the mean of the m rows
        deviations.append(float((mean.double() - x.double()).square().sum()))
    bound = 4 * omega * float(x.double().square().sum()) / m
    assert float(np.median(deviations)) <= bound


def _relative_errors(c, x, draws):
    norm_sq = float(x.double().square().sum())
    return np.array(
        [float((_decoded(c, x, Context(seed=3, step=t, rank=2)).double() - x.double()).square().sum()) / norm_sq
         for t in range(draws)]
    )


def _mean_within(errors, bound):
    """The mean of the draws is at most bound + 5 standard errors (a bound that is exact in
    expectation, as Rand-k's, fails with probability about 3e-7 under the normal approximation)."""
    return errors.mean() <= bound + 5 * errors.std(ddof=1) / math.sqrt(len(errors)) + 1e-9


@pytest.mark.parametrize("c", UNBIASED, ids=repr)
def test_variance_within_omega(c):
    for x in (_x(2), _x(3) ** 3):
        assert _mean_within(_relative_errors(c, x, 400), c.omega(D))


DETERMINISTIC = (TopK, ScaledSign, Int8, FP8)


@pytest.mark.parametrize("c", CONTRACTIVE, ids=repr)
def test_contraction_within_alpha(c):
    inputs = [_x(3), torch.ones(D), torch.zeros(D).index_fill_(0, torch.tensor([5]), -2.0), _x(4) ** 3]
    alpha = c.alpha(D)
    assert 0.0 < alpha <= 1.0
    for x in inputs:
        if type(c) in DETERMINISTIC and not getattr(c, "stochastic", False):  # the bound holds for every x
            assert _relative_errors(c, x, 1)[0] <= (1 - alpha) * (1 + 1e-6)
        else:
            assert _mean_within(_relative_errors(c, x, 400), 1 - alpha)


def test_a_biased_rounding_fails_the_unbiasedness_bound():
    """The median-of-means bound has power: deterministic int8 is biased on a vector whose
    entries sit between two codes, and the mean of any number of its draws (all equal)
    stays further from x than the bound allows an unbiased compressor of the same omega."""
    x = torch.full((256,), 0.3)
    x[0] = 127.0  # scale 1: every other entry rounds 0.3 -> 0
    deviation = float((_decoded(Int8(block=256), x, Context()) - x).square().sum())
    omega = Int8(block=256, stochastic=True).omega(256)
    assert deviation > 4 * omega * float(x.square().sum()) / 40


# ---- the wire layout, read by an independent unpacker ----

def _unpack_codes(message: torch.Tensor, numel: int, bits: int, block: int):
    """Headers and codes by the layout of csrc/message_layout.h: per block a 4-byte header,
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
    c = QSGD(levels=levels, block=128)
    message = c.encode(x, Context(seed=1))
    assert message.numel() == 4 * 3 + 3 * 128 * bits // 8
    headers, codes = _unpack_codes(message, 300, bits, 128)
    norms = headers.view(np.float32)
    level_mask = (1 << (bits - 1)) - 1
    expected = []
    for i in range(300):
        level = codes[i] & level_mask
        sign = -1.0 if codes[i] >> (bits - 1) else 1.0
        assert level <= levels
        expected.append(sign * float(norms[i // 128]) * level / levels)
    decoded = _decoded(c, x, Context(seed=1))
    assert torch.allclose(decoded.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    # The norms are the blocks' L2 norms, and every level is one of the two around |x| s / norm.
    for b in range(3):
        assert math.isclose(norms[b], float(x[128 * b : 128 * (b + 1)].double().norm()), rel_tol=1e-6)
    t = x.abs().double() * levels / torch.tensor(np.repeat(norms, 128)[:300].astype(np.float64))
    assert torch.all((torch.tensor(codes & level_mask) - t).abs() < 1 + 1e-6)


def test_sign_int8_fp8_natural_codes_by_the_documented_layout():
    x = _x(7, 200)
    headers, codes = _unpack_codes(ScaledSign(block=64).encode(x, Context()), 200, 1, 64)
    assert codes.tolist() == (x < 0).int().tolist()
    assert math.isclose(headers.view(np.float32)[0], float(x[:64].abs().sum()) / 64, rel_tol=1e-6)
    headers, codes = _unpack_codes(Int8(block=64).encode(x, Context()), 200, 8, 64)
    scale = headers.view(np.float32)
    expected = torch.round(x / torch.tensor(np.repeat(scale, 64)[:200])).to(torch.int8)
    assert codes.astype(np.uint8).view(np.int8).tolist() == expected.tolist()
    headers, codes = _unpack_codes(FP8(block=64).encode(x, Context()), 200, 8, 64)
    scale = torch.tensor(np.repeat(headers.view(np.float32), 64)[:200])
    expected = (x / scale).to(torch.float8_e4m3fn).view(torch.uint8)  # PyTorch's own e4m3 rounding
    assert codes.tolist() == expected.tolist()
    headers, codes = _unpack_codes(Natural(block=64).encode(x, Context(seed=2)), 200, 8, 64)
    base = headers.view(np.int32)
    for i in range(200):
        exponent = int(base[i // 64]) + 1 - (codes[i] & 0x7F)
        low = math.floor(math.log2(abs(float(x[i]))))
        assert exponent in (low, low + 1)
        assert (codes[i] >> 7) == (1 if x[i] < 0 else 0)


def test_exact_round_trips_of_representable_values():
    scale = 0.5
    q = torch.arange(-127, 128, dtype=torch.float32)
    assert torch.equal(_decoded(Int8(block=256), q * scale, Context()), q * scale)
    assert torch.equal(_decoded(Int8(block=256, stochastic=True), q * scale, Context(seed=9)), q * scale)
    grid = torch.arange(0, 256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)][:-1]  # drop NaN codes; keep the max 448 last
    grid = torch.cat([grid, torch.tensor([448.0])])
    for stochastic in (False, True):
        out = _decoded(FP8(block=256, stochastic=stochastic), grid[:256], Context(seed=4))
        assert torch.equal(out, grid[:256])
    powers = torch.tensor([2.0**e * s for e in range(-20, 20) for s in (1, -1)])
    assert torch.equal(_decoded(Natural(block=128), powers, Context(seed=1)), powers)
    one_hot = torch.zeros(512).index_fill_(0, torch.tensor([17]), -3.25)
    assert torch.equal(_decoded(QSGD(levels=7, block=512), one_hot, Context(seed=1)), one_hot)
    constant = torch.full((128,), -0.75)
    assert torch.equal(_decoded(ScaledSign(block=128), constant, Context()), constant)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [QSGD(levels=3, block=64), Natural(block=64), ScaledSign(block=64), Int8(block=64),
                               Int8(block=64, stochastic=True), FP8(block=64), FP8(block=64, stochastic=True),
                               RandK(k=30), RandK(k=30, window=True), RandK(k=200, unbiased=True)], ids=repr)
def test_fused_ef21_encode_equals_encode_then_own_decode(c, dtype):
    """The fused EF21 step (ef21_quantize_ for the quantizers, one index draw for Rand-k)
    gives the message and h_local of the composition C(g - h_local) + decode of its own
    message into h_local."""
    g = _x(10, 300).to(dtype)
    h_fused = (_x(11, 300) * 0.5).to(dtype)
    h_composed = h_fused.clone()
    ctx = Context(seed=4, step=3, bucket=2, rank=1)
    message = c.ef21_encode_(g, h_fused, ctx)
    expected = c.encode(g - h_composed, ctx)
    c.decode_add_(h_composed, expected.unsqueeze(0), ctx, weights=[1.0])
    assert torch.equal(message, expected)
    assert torch.equal(h_fused, h_composed)


def test_qsgd_four_bit_wire_size_within_one_percent():
    numel, block = 10_000_000, 512
    bits = QSGD(levels=7, block=block).bits_per_entry(numel, torch.float32)
    target = 4 + 32 / block  # 4 bits per entry plus one float32 norm per block
    assert target <= bits <= 1.01 * target
    assert Natural(block=1024).bits_per_entry(numel, torch.float32) <= 1.01 * (8 + 32 / 1024)
    assert ScaledSign(block=1024).bits_per_entry(numel, torch.float32) <= 1.01 * (1 + 32 / 1024)


@pytest.mark.parametrize("scheme", ["qsgd", "natural", "sign", "int8", "fp8"])
def test_non_finite_blocks_decode_non_finite(scheme):
    stochastic = scheme in ("qsgd", "natural")
    for bad in (float("nan"), float("inf")):
        x = torch.randn(256)
        x[200] = bad
        message = ops.quantize(x, scheme, 7, 128, stochastic, 0, 0, 0, 0)
        out = torch.zeros(256)
        ops.quant_decode_add_(out, message.unsqueeze(0), scheme, 7, 128)
        assert not torch.isfinite(out[128:]).any()  # the block holding it
        assert torch.isfinite(out[:128]).all()  # the other block is untouched


def test_stochastic_rounding_is_reproducible_and_rank_dependent():
    x = _x(8)
    ctx = Context(seed=11, step=4, bucket=2, rank=0)
    c = QSGD(levels=3, block=128)
    assert torch.equal(c.encode(x, ctx), c.encode(x, ctx))
    assert not torch.equal(c.encode(x, ctx), c.encode(x, Context(seed=11, step=4, bucket=2, rank=1)))
    assert not torch.equal(c.encode(x, ctx), c.encode(x, Context(seed=11, step=5, bucket=2, rank=0)))
    assert not torch.equal(c.encode(x, ctx), c.encode(x, Context(seed=12, step=4, bucket=2, rank=0)))


# ---- Rand-k ----

def test_randk_indices_shared_distinct_and_fresh_each_step():
    x = torch.zeros(5000)
    a = ops.randk_indices(x, 50, 3, 0, 9)
    assert a.dtype == torch.int64 and a.numel() == 50
    assert torch.equal(a, torch.unique(a))  # distinct and ascending
    assert torch.equal(a, ops.randk_indices(x, 50, 3, 0, 9))  # no rank in the key
    assert not torch.equal(a, ops.randk_indices(x, 50, 3, 1, 9))
    assert not torch.equal(a, ops.randk_indices(x, 50, 3, 0, 10))
    window = ops.randk_indices(x, 50, 3, 0, 9, True)
    assert torch.equal((window - window[0]) % 5000, torch.arange(50))
    # Uniform: each coordinate is kept with probability k/d (chi-square over 200 steps).
    counts = torch.zeros(100)
    for step in range(400):
        counts.index_add_(0, ops.randk_indices(torch.zeros(100), 10, 1, step, 0), torch.ones(10))
    expected = 400 * 10 / 100
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 180  # 99 degrees of freedom: P(chi2 > 180) < 1e-6


def test_randk_window_wraps_around():
    x = torch.arange(10, dtype=torch.float32)
    for step in range(20):
        idx = ops.randk_indices(x, 7, 0, step, 0, True)
        assert torch.equal(idx, (idx[0] + torch.arange(7)) % 10)
        message = ops.randk_encode(x, 7, 0, step, 0, True)
        assert torch.equal(message[:28].view(torch.float32), x[idx])


def test_randk_decode_sums_rows_in_rank_order():
    x = [_x(s, 300) for s in range(3)]
    ctx = Context(seed=2, step=5, bucket=1)
    c = RandK(k=30)
    gathered = torch.stack([c.encode(v, ctx) for v in x])
    out = torch.zeros(300)
    c.decode_add_(out, gathered, ctx)
    idx = ops.randk_indices(out, 30, 2, 5, 1)
    expected = torch.zeros(300)
    expected[idx] = (x[0][idx] + x[1][idx] + x[2][idx]) * (1 / 3)
    assert torch.allclose(out, expected, rtol=1e-6)
    unbiased = torch.zeros(300)
    RandK(k=30, unbiased=True).decode_add_(unbiased, gathered, ctx)
    assert torch.allclose(unbiased, expected * 10, rtol=1e-6)


def test_induced_is_topk_plus_compressed_residual():
    x = _x(9, 400)
    c = Induced(TopK(k=20), RandK(k=40, unbiased=True))
    ctx = Context(seed=1, step=2)
    message = c.encode(x, ctx)
    assert message.numel() == c.message_nbytes(400, torch.float32) == ops.topk_message_nbytes(20, torch.float32) + 160
    out = _decoded(c, x, ctx)
    top = ops.topk(x, 20)[1].long()
    assert torch.equal(out[top], x[top])  # the Top-k part is exact
    rest = ops.randk_indices(x, 40, 1, 2, 0)
    rest = rest[~torch.isin(rest, top)]
    assert torch.allclose(out[rest], x[rest] * 10, rtol=1e-6)


# ---- the configuration objects ----

def test_compressor_parameters():
    assert QSGD(levels=1, block=32).omega(10**6) == min(32 / 1, math.sqrt(32))
    assert Natural().omega(5) == 0.125 and Natural().alpha(5) == 0.875
    assert RandK(k=10, unbiased=True).omega(100) == 9.0 and RandK(k=10).alpha(100) == 0.1
    assert RandK(k=10, unbiased=True).scaled().alpha(100) == pytest.approx(0.1)
    assert QSGD(levels=7, block=512).scaled().alpha(10**6) == pytest.approx(1 / (1 + math.sqrt(512) / 7))
    assert Induced(TopK(k=10), RandK(k=10, unbiased=True)).omega(100) == pytest.approx(9 * 0.9)
    assert TopK(k=10).contractive and not QSGD(levels=1, block=128).contractive and Natural().contractive
    assert Int8().unbiased is False and Int8(stochastic=True).unbiased is True
    assert {QSGD(), QSGD()} == {QSGD()}  # hashable, compared by value (the hook hashes reprs)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: QSGD(levels=0), r"levels \(0\)"),
        (lambda: QSGD(levels=128), r"levels \(128\)"),
        (lambda: QSGD(block=100), r"block \(100\)"),
        (lambda: Natural(block=16), r"block \(16\)"),
        (lambda: RandK(ratio=1.5), r"ratio \(1.5\)"),
        (lambda: RandK(k=0), r"k \(0\)"),
        (lambda: TopK().scaled(), r"not unbiased"),
        (lambda: TopK(threshold=1), r"TopK threshold \(1\) must be a bool"),
        (lambda: Induced(QSGD(), TopK()), r"biased \(QSGD"),
        (lambda: Induced(TopK(), TopK()), r"unbiased_part \(TopK"),
    ],
)
def test_bad_compressor_parameters_raise(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize(
    "method,compressor,pattern",
    [
        ("ef21", QSGD(levels=7, block=512), r"needs a contractive compressor.*scaled\(\)"),
        ("ef", RandK(ratio=0.1, unbiased=True), r"needs a contractive compressor"),
        ("none", TopK(), r"needs an unbiased compressor"),
        ("none", ScaledSign(), r"needs an unbiased compressor"),
        ("ef21", "topk", r"must be an efcomm compressor"),
    ],
)
def test_methods_reject_compressors_they_cannot_use(method, compressor, pattern):
    exception = TypeError if isinstance(compressor, str) else ValueError
    with pytest.raises(exception, match=pattern):
        efcomm.EFState(method, compressor)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: ops.quantize(torch.ones(64), "bits", 7, 64, True, 0, 0, 0, 0), r"scheme \('bits'\)"),
        (lambda: ops.quantize(torch.ones(64), "qsgd", 7, 48, True, 0, 0, 0, 0), r"block \(48\)"),
        (lambda: ops.quantize(torch.ones(64), "qsgd", 0, 64, True, 0, 0, 0, 0), r"levels \(0\)"),
        (lambda: ops.quantize(torch.ones(64), "qsgd", 7, 64, False, 0, 0, 0, 0), r"stochastic \(false\)"),
        (lambda: ops.quantize(torch.ones(64), "sign", 0, 64, True, 0, 0, 0, 0), r"stochastic \(true\)"),
        (lambda: ops.quantize(torch.ones(64), "int8", 0, 64, True, 0, -1, 0, 0), r"step \(-1\)"),
        (lambda: ops.quantize(torch.ones(64), "int8", 0, 64, True, 0, 0, 0, -2), r"rank \(-2\)"),
        (lambda: ops.quantize(torch.ones(64, dtype=torch.int32), "int8", 0, 64, True, 0, 0, 0, 0), r"x has dtype"),
        (lambda: ops.quant_decode_add_(torch.zeros(64), torch.zeros(2, 8, dtype=torch.uint8), "int8", 0, 64),
         r"gathered rows have 8 bytes.*68 bytes"),
        (lambda: ops.quant_decode_add_(torch.zeros(64), torch.zeros(2, 68, dtype=torch.uint8), "int8", 0, 64, 1.0, [1.0]),
         r"weights has 1 entries"),
        (lambda: ops.quant_decode_add_(torch.zeros(64), torch.zeros(1, 68, dtype=torch.uint8), "int8", 0, 64, float("inf")),
         r"scale \(inf\)"),
        (lambda: ops.randk_encode(torch.ones(10), 11, 0, 0, 0), r"k \(11\) exceeds"),
        (lambda: ops.randk_encode(torch.ones(10), 0, 0, 0, 0), r"k \(0\) must be at least 1"),
        (lambda: ops.randk_decode_add_(torch.zeros(10), torch.zeros(1, 8, dtype=torch.uint8), 3, 0, 0, 0),
         r"Rand-k message of k=3"),
        (lambda: ops.quant_message_nbytes(0, "int8", 0, 64), r"numel \(0\)"),
        (lambda: ops.ef21_quantize_(torch.ones(64), torch.ones(32), "int8", 0, 64, False, 0, 0, 0, 0),
         r"ef21_quantize_: h_local has shape \[32\] but g has shape \[64\]"),
        (lambda: ops.ef21_quantize_(torch.ones(64), torch.ones(64), "qsgd", 7, 64, False, 0, 0, 0, 0),
         r"ef21_quantize_: stochastic \(false\)"),
    ],
)
def test_bad_op_arguments_raise_errors_naming_them(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def _samples(device):
    x = torch.randn(300, device=device)
    q = ops.quantize(x, "qsgd", 7, 128, True, 1, 2, 3, 4)
    r = ops.randk_encode(x, 30, 1, 2, 3, False)
    return [
        ("quantize", (x, "qsgd", 7, 128, True, 1, 2, 3, 4)),
        ("quantize", (x.half(), "fp8", 0, 64, False, 1, 2, 3, 0)),
        ("quant_decode_add_", (torch.zeros(300, device=device), torch.stack([q, q]), "qsgd", 7, 128, 0.5, None)),
        ("quant_decode_add_", (torch.zeros(300, device=device), torch.stack([q, q]), "qsgd", 7, 128, 1.0, [0.25, 0.75])),
        ("ef21_quantize_", (x, torch.zeros(300, device=device), "natural", 0, 64, True, 1, 2, 3, 4)),
        ("randk_indices", (x, 30, 1, 2, 3, True)),
        ("randk_encode", (x, 30, 1, 2, 3, False)),
        ("randk_decode_add_", (torch.zeros(300, device=device), torch.stack([r, r]), 30, 1, 2, 3, False, 2.0, None)),
    ]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_opcheck_quantizer_and_randk_ops(device):
    for name, args in _samples(device):
        torch.library.opcheck(getattr(torch.ops.efcomm, name).default, args)


# ---- CUDA against the CPU reference, bit for bit ----

SCHEMES = [("qsgd", 1, True), ("qsgd", 7, True), ("qsgd", 127, True), ("natural", 0, True), ("sign", 0, False),
           ("int8", 0, False), ("int8", 0, True), ("fp8", 0, False), ("fp8", 0, True)]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 769, 2**20 + 3])
@pytest.mark.parametrize("scheme,levels,stochastic", SCHEMES)
@pytest.mark.parametrize("block", [32, 512])
def test_cuda_quantize_and_decode_match_cpu_exactly(scheme, levels, stochastic, numel, dtype, block):
    x = (torch.randn(numel, generator=torch.Generator().manual_seed(numel)) * 3).to(dtype)
    if numel > 7:
        x[5] = 0.0
        x[6] = -x[6]
    args = (scheme, levels, block, stochastic, 123, 4, 5, 1)
    cpu = ops.quantize(x, *args)
    cuda = ops.quantize(x.cuda(), *args)
    assert torch.equal(cuda.cpu(), cpu)
    gathered = torch.stack([cpu, ops.quantize(x * 0.5, *args), ops.quantize(-x, *args)])
    for weights, scale in ((None, 1.0), ([0.5, 0.25, -1.0], 0.75)):
        h = torch.randn(numel, generator=torch.Generator().manual_seed(1)).to(dtype)
        h_cuda = h.cuda()
        ops.quant_decode_add_(h, gathered, scheme, levels, block, scale, weights)
        ops.quant_decode_add_(h_cuda, gathered.cuda(), scheme, levels, block, scale, weights)
        assert torch.equal(h_cuda.cpu(), h)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme,levels,stochastic", SCHEMES)
def test_cuda_fused_ef21_quantize_matches_cpu_exactly(scheme, levels, stochastic, dtype):
    numel = 2**20 + 3
    g = torch.randn(numel, generator=torch.Generator().manual_seed(5)).to(dtype)
    h = torch.randn(numel, generator=torch.Generator().manual_seed(6)).to(dtype)
    h_gpu = h.cuda()
    args = (scheme, levels, 256, stochastic, 8, 1, 2, 3)
    message = ops.ef21_quantize_(g, h, *args)
    assert torch.equal(ops.ef21_quantize_(g.cuda(), h_gpu, *args).cpu(), message)
    assert torch.equal(h_gpu.cpu(), h)


@requires_cuda
def test_cuda_quantize_non_finite_and_non_contiguous_match_cpu():
    x = torch.randn(64, 40)[:, ::2]  # non-contiguous, 1280 entries
    x[3, 4] = float("nan")
    x[20, 1] = float("inf")
    for scheme, levels, stochastic in SCHEMES:
        args = (scheme, levels, 128, stochastic, 1, 0, 0, 0)
        assert torch.equal(ops.quantize(x.cuda(), *args).cpu(), ops.quantize(x, *args))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 7), (769, 77), (2**20 + 3, 10486)])
@pytest.mark.parametrize("window", [False, True])
def test_cuda_randk_matches_cpu_exactly(numel, k, window, dtype):
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(dtype)
    args = (k, 77, 3, 2, window)
    assert torch.equal(ops.randk_indices(x.cuda(), *args).cpu(), ops.randk_indices(x, *args))
    message = ops.randk_encode(x, *args)
    assert torch.equal(ops.randk_encode(x.cuda(), *args).cpu(), message)
    gathered = torch.stack([message, ops.randk_encode(-2 * x, *args)])
    h = torch.zeros(numel, dtype=dtype)
    h_cuda = h.cuda()
    ops.randk_decode_add_(h, gathered, *args, 1.5, [0.5, 0.5])
    ops.randk_decode_add_(h_cuda, gathered.cuda(), *args, 1.5, [0.5, 0.5])
    assert torch.equal(h_cuda.cpu(), h)
