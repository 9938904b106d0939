"""The contract every compressor family shares (csrc/ops.h): an encode with a state updates it
exactly as the decode of its own message would, the canonical NaN on every value an op writes,
and the message sizes (kernels/wire_layout.h)."""

import pytest
import torch
from conftest import DTYPES
from reference import unpack

from efcomm import ops

# (name, scheme, levels, stochastic) of every registered quantizer scheme
SCHEMES = [
    ("qsgd", 7, True),
    ("natural", 0, True),
    ("sign", 0, False),
    ("int8", 0, False),
    ("int8", 0, True),
    ("fp8", 0, False),
    ("fp8", 0, True),
    ("int4", 0, False),
    ("int4", 0, True),
]


def _families(a, k, block):
    """(name, encode(b, scale), decode(h, message, scale), encode without b) of every family."""
    seed = (3, 4, 5)
    cases = [
        (
            "topk",
            lambda b, s: ops.topk_encode_(a, b, k, s),
            lambda h, m, s: ops.topk_decode_add_(h, m[None], k, s),
            lambda d: ops.topk_encode_(d, None, k),
        ),
        (
            "dense",
            lambda b, s: ops.dense_encode_(a, b, None, s),
            lambda h, m, s: ops.dense_decode_add_(h, m[None], s),
            lambda d: ops.dense_encode_(d, None),
        ),
        (
            "randk",
            lambda b, s: ops.randk_encode_(a, b, k, *seed, False, s),
            lambda h, m, s: ops.randk_decode_add_(h, m[None], k, *seed, False, s),
            lambda d: ops.randk_encode_(d, None, k, *seed, False),
        ),
        (
            "randk-window",
            lambda b, s: ops.randk_encode_(a, b, k, *seed, True, s),
            lambda h, m, s: ops.randk_decode_add_(h, m[None], k, *seed, True, s),
            lambda d: ops.randk_encode_(d, None, k, *seed, True),
        ),
        (
            "randk-rank",
            lambda b, s: ops.randk_encode_(a, b, k, *seed, True, s, rank=2),
            lambda h, m, s: ops.topk_decode_add_(h, m[None], k, s),
            lambda d: ops.randk_encode_(d, None, k, *seed, True, rank=2),
        ),
    ]
    for chunk, bits in ((4096, 2), (64, 4), (32, 8)):
        cases.append(
            (
                f"chunktopk-{chunk}-{bits}",
                lambda b, s, c=chunk, w=bits: ops.chunktopk_encode_(a, b, min(k, c // 2), c, w, s),
                lambda h, m, s, c=chunk, w=bits: ops.chunktopk_decode_add_(h, m[None], min(k, c // 2), c, w, s),
                lambda d, c=chunk, w=bits: ops.chunktopk_encode_(d, None, min(k, c // 2), c, w),
            )
        )
    for scheme, levels, stochastic in SCHEMES:
        args = (scheme, levels, block, stochastic, 7, 1, 2, 3)
        cases.append(
            (
                scheme,
                lambda b, s, args=args: ops.quant_encode_(a, b, *args, s),
                lambda h, m, s, args=args: ops.quant_decode_add_(h, m[None], *args[:3], s),
                lambda d, args=args: ops.quant_encode_(d, None, *args),
            )
        )
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_encode_updates_its_state_as_the_decode_of_its_own_message(dtype):
    """X_encode_(a, b, scale=s) leaves b exactly as X_decode_add_(b, message[None], scale=s)
    would (zeros, -0, inf and NaN included), and its message is that of T(a - b) with no b."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(300, generator=gen).to(dtype)
    b = torch.randn(300, generator=gen).to(dtype)
    a[:4] = torch.tensor([0.0, -0.0, float("inf"), float("nan")]).to(dtype)
    b[:4] = torch.tensor([-0.0, 0.0, float("inf"), 1.0]).to(dtype)
    a[4:8] = b[4:8]  # differences of zero
    a[100:104] = torch.tensor([0.0, -0.0, -0.0, 0.0]).to(dtype)
    b[100:104] = torch.tensor([0.0, -0.0, 0.0, -0.0]).to(dtype)
    d = (a.float() - b.float()).to(dtype)
    d[torch.isnan(d)] = float("nan")  # the ops write the canonical NaN (torch's inf - inf is negative)
    for name, encode, decode, plain in _families(a, 100, 64):
        for scale in (1.0, -1.0, 0.3):
            fused = b.clone()
            message = encode(fused, scale)
            assert torch.equal(message, plain(d)), (name, scale)
            composed = b.clone()
            decode(composed, message, scale)
            assert torch.equal(fused.view(torch.uint8), composed.view(torch.uint8)), (name, scale)


# ---- the canonical NaN (issues 10 and 11, item 1) ----

CANONICAL = {torch.float32: 0x7FC00000, torch.bfloat16: 0x7FC0, torch.float16: 0x7E00}
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _bits(t: torch.Tensor) -> list:
    mask = 0xFFFFFFFF if t.element_size() == 4 else 0xFFFF
    return [v & mask for v in t.contiguous().view(INT_VIEW[t.dtype]).reshape(-1).tolist()]


def _from_bits(dtype, bits):
    """A one-element tensor of dtype with these bits."""
    width = 8 * torch.empty((), dtype=dtype).element_size()
    signed = bits - (1 << width) if bits >= 1 << (width - 1) else bits
    return torch.tensor([signed], dtype=INT_VIEW[dtype]).view(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_top_entry_is_written_as_the_canonical_nan(dtype):
    """A NaN from inf - inf (x86: 0xFFC00000, negative) and NaNs with payloads (a negative one,
    a signalling-looking one) in the input: the message value, topk's value and the EF21 state
    all hold the canonical quiet NaN."""
    canonical = CANONICAL[dtype]
    g = torch.tensor([1.0, float("inf"), 2.0, -3.0]).to(dtype)
    h = torch.tensor([0.0, float("inf"), 0.0, 0.0]).to(dtype)
    message = ops.topk_encode_(g, h, 1)
    values, indices = unpack(message, 1, dtype)
    assert indices.tolist() == [1] and _bits(values) == [canonical]
    assert _bits(h[1:2]) == [canonical]  # inf + NaN
    payloads = {
        torch.float32: [0xFFC00000, 0x7FC00123, 0xFFFFFFFF],
        torch.bfloat16: [0xFFC0, 0x7FC3, 0xFFFF],
        torch.float16: [0xFE00, 0x7E01, 0xFFFF],
    }[dtype]
    for bits in payloads:
        x = torch.cat([torch.tensor([1.0, -5.0]).to(dtype), _from_bits(dtype, bits)])
        assert _bits(ops.topk(x, 1)[0]) == [canonical]
        values, _ = unpack(ops.topk_encode_(x, None, 2), 2, dtype)
        assert _bits(values)[1] == canonical
        state = torch.zeros(3, dtype=dtype)
        ops.topk_encode_(x, state, 1)
        assert _bits(state)[2] == canonical
        dense = ops.dense_encode_(x, None)
        assert _bits(dense[: 3 * x.element_size()].view(dtype))[2] == canonical


@pytest.mark.parametrize("dtype", DTYPES)
def test_decoded_nan_is_canonical_and_untouched_entries_keep_their_bits(dtype):
    canonical = CANONICAL[dtype]
    messages = torch.stack(
        [
            ops.topk_encode_(torch.tensor([0.0, 4.0, 0.0]).to(dtype), None, 1),
            ops.topk_encode_(torch.tensor([0.0, -float("inf"), 0.0]).to(dtype), None, 1),
        ]
    )
    h = torch.cat(
        [
            _from_bits(dtype, 0xFFFF if dtype != torch.float32 else 0xFFFFFFFF),
            torch.tensor([float("inf")]).to(dtype),
            torch.tensor([1.0]).to(dtype),
        ]
    )
    before = _bits(h)
    ops.topk_decode_add_(h, messages, 1)  # inf + (4 - inf) / 2 = -inf; then h + ... below
    assert _bits(h)[0] == before[0] and _bits(h)[2] == before[2]  # not carried: bit for bit
    assert _bits(h)[1] == canonical  # inf + -inf
    dense = torch.stack([ops.dense_encode_(torch.tensor([1.0, float("nan"), 2.0]).to(dtype), None)])
    out = torch.cat([_from_bits(dtype, 0xFFFF if dtype != torch.float32 else 0xFFFFFFFF), torch.zeros(2, dtype=dtype)])
    ops.dense_decode_add_(out, dense)
    assert _bits(out)[:2] == [canonical, canonical]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme,levels,stochastic", SCHEMES)
def test_quantizer_headers_of_non_finite_blocks_are_pinned(scheme, levels, stochastic, dtype):
    """Block 0 holds a NaN with a payload, block 1 a NaN from inf - inf (the difference a - b),
    block 2 an inf, block 3 is finite: float headers are the canonical NaN, +inf and finite;
    natural's are its int32 sentinel for NaN and inf."""
    a = torch.randn(256, generator=torch.Generator().manual_seed(1))
    b = torch.zeros(256)
    a[3] = torch.tensor([-0x3FFFFF], dtype=torch.int32).view(torch.float32)  # 0xFFC00001: -NaN, payload 1
    a[70], b[70] = float("inf"), float("inf")
    a[140] = -float("inf")
    message = ops.quant_encode_(a.to(dtype), b.to(dtype), scheme, levels, 64, stochastic, 0, 0, 0, 0)
    headers = [v & 0xFFFFFFFF for v in message[:16].view(torch.int32).tolist()]
    if scheme == "natural":
        assert headers[:3] == [0x80000000] * 3 and headers[3] != 0x80000000
    else:
        assert headers[:3] == [0x7FC00000, 0x7FC00000, 0x7F800000]
        assert torch.isfinite(message[12:16].view(torch.float32)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_randk_values_and_state_write_the_canonical_nan(dtype):
    canonical = CANONICAL[dtype]
    a = torch.full((8,), float("inf")).to(dtype)
    for rank in (None, 1):
        b = a.clone()
        message = ops.randk_encode_(a, b, 8, 0, 0, 0, False, rank=rank)
        assert _bits(message[: 8 * a.element_size()].view(dtype)) == [canonical] * 8  # inf - inf
        assert _bits(b) == [canonical] * 8


# ---- sizes ----


def test_message_sizes_are_padded_to_four_bytes():
    assert ops.message_nbytes("topk", 10, torch.float32, k=1) == 8
    assert ops.message_nbytes("topk", 10, torch.float16, k=1) == 8
    assert ops.message_nbytes("topk", 10, torch.bfloat16, k=3) == 20
    assert ops.message_nbytes("topk", 1000, torch.float32, k=1000) == 8000
    assert ops.message_nbytes("randk", 10, torch.bfloat16, k=3) == 8
    assert ops.message_nbytes("dense", 7, torch.float16) == 16
    assert ops.message_nbytes("dense", 7, torch.float32) == 28
    assert ops.message_nbytes("quant", 300, torch.float32, scheme="qsgd", levels=7, block=128) == 4 * 3 + 3 * 64
    # chunked Top-k: a scale per chunk, then each chunk's fields padded to words; any dtype
    assert ops.message_nbytes("chunktopk", 4096, torch.float32, k=82, block=4096, bits=2) == 4 + 4 * 36
    assert ops.message_nbytes("chunktopk", 4097, torch.float16, k=82, block=4096, bits=2) == 8 + 4 * 36 + 4
    assert ops.message_nbytes("chunktopk", 7, torch.bfloat16, k=82, block=4096, bits=4) == 4 + 4 * 4


@pytest.mark.parametrize(
    "args,pattern",
    [
        (("topk", 10, torch.float32, 0), r"message_nbytes: k \(0\) must be at least 1"),
        (("topk", 10, torch.float32, 11), r"message_nbytes: k \(11\) exceeds the number of elements \(10\)"),
        (("dense", 0, torch.float32), r"message_nbytes: numel \(0\) must be at least 1"),
        (("dense", 4, torch.float64), r"message_nbytes: dtype \(Double\) must be float32"),
        (("bits", 4, torch.float32), r"message_nbytes: family \('bits'\) must be one of"),
        (("quant", 4, torch.float32, 0, "qsgd", 0, 64), r"message_nbytes: levels \(0\) must be in \[1, 127\]"),
        (("chunktopk", 4, torch.float32, 2, "", 0, 100, 2), r"message_nbytes: chunk \(100\) must be a power of two"),
        (("chunktopk", 4, torch.float32, 0, "", 0, 4096, 2), r"message_nbytes: k \(0\) must be at least 1"),
    ],
)
def test_message_nbytes_bad_arguments(args, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        ops.message_nbytes(*args)
