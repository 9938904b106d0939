"""The compressors: statistics (unbiasedness, variance within omega, contraction within
alpha), exact round trips, every compressor's encode with a state against its composition
(encode of the difference, then the decode of its own message), Rand-k's decode, the induced
compressor, and the configuration objects. (The quantizer and Rand-k ops
themselves, their wire layout and CPU/CUDA parity: test_quant_ops.py.)"""

import math

import numpy as np
import pytest
import torch
from conftest import DTYPES

import efcomm
from efcomm import (
    FP8,
    QSGD,
    ChunkTopK,
    Clip,
    Context,
    Identity,
    Induced,
    Int4,
    Int8,
    Natural,
    RandK,
    ScaledSign,
    TopK,
    ops,
)

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
    RandK(ratio=0.1, unbiased=True, shared=False),
    Int4(block=64, stochastic=True),
    Induced(TopK(ratio=0.05), RandK(ratio=0.05, unbiased=True)),
    Induced(TopK(ratio=0.05), QSGD(levels=3, block=128)),
    Identity(),
]
CONTRACTIVE = [
    TopK(ratio=0.05),
    ChunkTopK(k=9, chunk=128),
    ChunkTopK(ratio=0.2, bits=4, chunk=256),
    RandK(ratio=0.1),
    RandK(ratio=0.1, shared=False),
    ScaledSign(block=128),
    Int4(block=64),
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
    c.decode_add_(out, c.encode_(x, None, ctx).unsqueeze(0), ctx)
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
        messages = torch.stack(
            [c.encode_(x, None, Context(seed=7, step=g * m + t, bucket=3, rank=1)) for t in range(m)]
        )
        mean = torch.zeros_like(x)
        if isinstance(c, (RandK, Induced)):  # the indices change with the step: decode one at a time
            for t in range(m):
                ctx = Context(seed=7, step=g * m + t, bucket=3, rank=1)
                c.decode_add_(mean, messages[t : t + 1], ctx, weights=torch.tensor([1.0 / m]))
        else:
            c.decode_add_(mean, messages, Context())  # the mean of the m rows
        deviations.append(float((mean.double() - x.double()).square().sum()))
    bound = 4 * omega * float(x.double().square().sum()) / m
    assert float(np.median(deviations)) <= bound


def _relative_errors(c, x, draws):
    norm_sq = float(x.double().square().sum())
    return np.array(
        [
            float((_decoded(c, x, Context(seed=3, step=t, rank=2)).double() - x.double()).square().sum()) / norm_sq
            for t in range(draws)
        ]
    )


def _mean_within(errors, bound):
    """The mean of the draws is at most bound + 5 standard errors (a bound that is exact in
    expectation, as Rand-k's, fails with probability about 3e-7 under the normal approximation)."""
    return errors.mean() <= bound + 5 * errors.std(ddof=1) / math.sqrt(len(errors)) + 1e-9


@pytest.mark.parametrize("c", UNBIASED, ids=repr)
def test_variance_within_omega(c):
    for x in (_x(2), _x(3) ** 3):
        assert _mean_within(_relative_errors(c, x, 400), c.omega(D))


DETERMINISTIC = (TopK, ChunkTopK, ScaledSign, Int8, FP8, Int4)


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
@pytest.mark.parametrize(
    "c",
    [
        QSGD(levels=3, block=64),
        Natural(block=64),
        ScaledSign(block=64),
        Int8(block=64),
        Int8(block=64, stochastic=True),
        FP8(block=64),
        FP8(block=64, stochastic=True),
        Int4(block=64),
        Int4(block=64, stochastic=True),
        RandK(k=30),
        RandK(k=30, window=True),
        RandK(k=200, unbiased=True),
        RandK(k=30, shared=False),
        TopK(k=25),
        ChunkTopK(k=5, chunk=64),
        ChunkTopK(k=40, bits=8, chunk=128),
        Identity(),
        Clip(tau=0.5),
        QSGD(levels=3, block=64).scaled(),
        Induced(TopK(k=10), RandK(k=40, unbiased=True)),
    ],
    ids=repr,
)
def test_encode_with_a_state_equals_encode_then_own_decode(c, dtype):
    """encode_(g, h) (one op for the families: c = C(g - h), h += c) gives the message and h of
    the composition: the message of C(g - h), then the decode of that message into h."""
    g = _x(10, 300).to(dtype)
    h_fused = (_x(11, 300) * 0.5).to(dtype)
    h_composed = h_fused.clone()
    ctx = Context(seed=4, step=3, bucket=2, rank=1)
    message = c.encode_(g, h_fused, ctx)
    expected = c.encode_(g - h_composed, None, ctx)
    c.decode_add_(h_composed, expected.unsqueeze(0), ctx)
    assert torch.equal(message, expected)
    assert torch.equal(h_fused, h_composed)


def test_qsgd_four_bit_wire_size_within_one_percent():
    numel, block = 10_000_000, 512
    bits = QSGD(levels=7, block=block).bits_per_entry(numel, torch.float32)
    target = 4 + 32 / block  # 4 bits per entry plus one float32 norm per block
    assert target <= bits <= 1.01 * target
    assert Natural(block=1024).bits_per_entry(numel, torch.float32) <= 1.01 * (8 + 32 / 1024)
    assert ScaledSign(block=1024).bits_per_entry(numel, torch.float32) <= 1.01 * (1 + 32 / 1024)


# ---- Rand-k ----


def test_randk_decode_sums_rows_in_rank_order():
    x = [_x(s, 300) for s in range(3)]
    ctx = Context(seed=2, step=5, bucket=1)
    c = RandK(k=30)
    gathered = torch.stack([c.encode_(v, None, ctx) for v in x])
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
    message = c.encode_(x, None, ctx)
    assert (
        message.numel()
        == c.message_nbytes(400, torch.float32)
        == ops.message_nbytes("topk", 400, torch.float32, k=20) + 160
    )
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
        ("ef21", ChunkTopK(), r"needs a contractive compressor.*'ef'\) accepts it"),
        ("none", ChunkTopK(), r"needs an unbiased compressor"),
        ("none", TopK(), r"needs an unbiased compressor"),
        ("none", ScaledSign(), r"needs an unbiased compressor"),
        ("ef21", "topk", r"must be an efcomm compressor"),
    ],
)
def test_methods_reject_compressors_they_cannot_use(method, compressor, pattern):
    exception = TypeError if isinstance(compressor, str) else ValueError
    with pytest.raises(exception, match=pattern):
        efcomm.EFState(method, compressor)
