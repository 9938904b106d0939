"""Top-k messages with narrower values and compact indices (kernels/wire_layout.h: values as
bfloat16 or float16 for a float32 tensor; 16-bit offsets within chunks of 65536 entries and a
count per chunk), against an independent unpacker and the brute-force references."""

import math

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from reference import add_own, decode_add, topk_indices

import efcomm
from efcomm import ops

CHUNK = 65536
FORMATS = [  # (tensor dtype, value dtype, index bits)
    (torch.float32, torch.float32, 16),
    (torch.float32, torch.bfloat16, 16),
    (torch.float32, torch.float16, 16),
    (torch.float32, torch.bfloat16, 32),
    (torch.bfloat16, torch.bfloat16, 16),
    (torch.float16, torch.float16, 16),
]


def unpack(message: torch.Tensor, numel: int, k: int, value_dtype: torch.dtype, index_bits: int):
    """(values, int64 indices) read with numpy from the documented layout."""
    raw = message.numpy().tobytes()
    size = torch.empty((), dtype=value_dtype).element_size()
    align4 = lambda b: (b + 3) // 4 * 4  # noqa: E731
    if index_bits == 32:
        values = torch.frombuffer(bytearray(raw[: k * size]), dtype=value_dtype)
        indices = np.frombuffer(raw, dtype="<i4", count=k, offset=align4(k * size))
        return values, torch.from_numpy(indices.astype(np.int64))
    chunks = math.ceil(numel / CHUNK)
    counts = np.frombuffer(raw, dtype="<u4", count=chunks)
    values = torch.frombuffer(bytearray(raw[4 * chunks : 4 * chunks + k * size]), dtype=value_dtype)
    offsets = np.frombuffer(raw, dtype="<u2", count=k, offset=4 * chunks + align4(k * size))
    chunk_of = np.repeat(np.arange(chunks), counts)
    assert counts.sum() == k and len(message) == 4 * chunks + align4(k * size) + align4(2 * k)
    return values, torch.from_numpy(chunk_of * CHUNK + offsets.astype(np.int64))


@pytest.mark.parametrize("dtype,value_dtype,index_bits", FORMATS, ids=str)
@pytest.mark.parametrize("numel,k", [(7, 3), (769, 40), (200_003, 2_000)])
def test_encode_writes_the_topk_in_the_format_and_keeps_the_rounding_in_the_state(
    dtype, value_dtype, index_bits, numel, k
):
    gen = torch.Generator().manual_seed(numel)
    g = torch.randn(numel, generator=gen).mul_(3.0).to(dtype)
    h_local = torch.randn(numel, generator=gen).to(dtype)
    d = (g.float() - h_local.float()).to(dtype)
    expected = topk_indices(d, k)
    sent = d[expected].to(value_dtype)  # rounded to nearest even
    expected_h = h_local.clone()
    expected_h[expected] = add_own(h_local[expected], sent, 0.5)
    family = "topk16" if index_bits == 16 else "topk"
    message = ops.topk_encode_(g, h_local, k, 0.5, value_dtype=value_dtype, index_bits=index_bits)
    assert message.numel() == ops.message_nbytes(family, numel, value_dtype, k=k)
    values, indices = unpack(message, numel, k, value_dtype, index_bits)
    assert torch.equal(indices, expected)
    assert torch.equal(values, sent)
    assert torch.equal(h_local, expected_h)  # the state adds what was sent: it keeps the error


@pytest.mark.parametrize("dtype,value_dtype,index_bits", FORMATS, ids=str)
def test_decode_of_the_format_matches_the_reference(dtype, value_dtype, index_bits):
    numel, k, world = 150_001, 700, 3
    gen = torch.Generator().manual_seed(3)
    messages, pairs = [], []
    for _ in range(world):
        message = ops.topk_encode_(
            torch.randn(numel, generator=gen).to(dtype), None, k, value_dtype=value_dtype, index_bits=index_bits
        )
        messages.append(message)
        pairs.append(unpack(message, numel, k, value_dtype, index_bits))
    weights = torch.rand(world, generator=gen)
    for w, scale in ((None, 1.0), (weights, -0.5)):
        h = torch.randn(numel, generator=gen).to(dtype)
        expected = decode_add(h, pairs, None if w is None else w.tolist(), scale)
        ops.topk_decode_add_(h, torch.stack(messages), k, scale, w, value_dtype=value_dtype, index_bits=index_bits)
        assert torch.equal(h, expected)


def test_compact_and_standard_messages_decode_to_the_same_bits():
    g = torch.randn(300_000, generator=torch.Generator().manual_seed(5))
    h_a, h_b = torch.zeros(300_000), torch.zeros(300_000)
    ops.topk_decode_add_(h_a, ops.topk_encode_(g, None, 3_000).unsqueeze(0), 3_000)
    ops.topk_decode_add_(h_b, ops.topk_encode_(g, None, 3_000, index_bits=16).unsqueeze(0), 3_000, index_bits=16)
    assert torch.equal(h_a, h_b)


def test_about_four_bytes_per_entry_with_bfloat16_values():
    numel, k = 6_553_600, 65_536  # one default DDP bucket of float32, Top-1%
    compact = ops.message_nbytes("topk16", numel, torch.bfloat16, k=k)
    standard = ops.message_nbytes("topk", numel, torch.float32, k=k)
    assert standard == 8 * k and compact == 4 * 100 + 4 * k  # 100 chunks' counts
    assert efcomm.TopK(0.01, value_dtype=torch.bfloat16, index_bits=16).bits_per_entry(numel, torch.float32) < 0.33


@pytest.mark.parametrize(
    "call,pattern",
    [
        (
            lambda: ops.topk_encode_(torch.randn(8, dtype=torch.bfloat16), None, 2, value_dtype=torch.float16),
            r"topk_encode_: value_dtype \(Half\) must be the tensor's dtype \(BFloat16\)",
        ),
        (
            lambda: ops.topk_encode_(torch.randn(8, dtype=torch.float16), None, 2, value_dtype=torch.float32),
            r"value_dtype \(Float\) must be the tensor's dtype \(Half\)",
        ),
        (
            lambda: ops.topk_encode_(torch.randn(8), None, 2, index_bits=8),
            r"topk_encode_: index_bits \(8\) must be 32 or 16",
        ),
        (
            lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(1, 32, dtype=torch.uint8), 4, index_bits=16),
            r"gathered rows have 32 bytes but a compact Top-k message of k=4 Float values has 28 bytes",
        ),
        (lambda: ops.message_nbytes("topk32", 8, torch.float32, k=2), r"family \('topk32'\) must be one of"),
    ],
)
def test_bad_formats_raise_errors_naming_them(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_decode_rejects_counts_that_do_not_add_up():
    message = ops.topk_encode_(torch.arange(8.0), None, 2, index_bits=16)
    message[0:4].view(torch.int32).fill_(3)  # one chunk claims 3 entries of 2
    with pytest.raises(RuntimeError, match=r"message of rank 0 counts more than k \(2\) entries by chunk 0"):
        ops.topk_decode_add_(torch.zeros(8), message.unsqueeze(0), 2, index_bits=16)
    message[0:4].view(torch.int32).fill_(1)
    with pytest.raises(RuntimeError, match=r"message of rank 0 counts 1 entries; k is 2"):
        ops.topk_decode_add_(torch.zeros(8), message.unsqueeze(0), 2, index_bits=16)


def test_opcheck_of_the_formats():
    g = torch.randn(97)
    h_local = torch.randn(97)
    for value_dtype, bits in ((torch.bfloat16, 16), (torch.float16, 32), (None, 16)):
        gathered = torch.stack([ops.topk_encode_(g, None, 9, value_dtype=value_dtype, index_bits=bits)] * 2)
        torch.library.opcheck(
            torch.ops.efcomm.topk_encode_.default, (g, h_local.clone(), 9, 0.5, None, value_dtype, bits)
        )
        torch.library.opcheck(
            torch.ops.efcomm.topk_decode_add_.default, (torch.zeros(97), gathered, 9, 1.0, None, value_dtype, bits)
        )


def test_the_compressor_and_a_method_with_compact_messages():
    from efcomm.cluster import Cluster

    compressor = efcomm.TopK(0.01, value_dtype=torch.bfloat16, index_bits=16)
    cluster = Cluster.create(2, "ef21", compressor, min_compress_numel=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        outs = cluster.step_bucket([torch.randn(100_000, generator=gen) for _ in range(2)])
        assert torch.equal(outs[0], outs[1])
    stats = cluster.states[0].stats
    assert stats.bytes_sent == 400_000 + 3 * compressor.message_nbytes(100_000, torch.float32)
    # the non-finite check reads the values behind the counts
    message = ops.topk_encode_(
        torch.tensor([1.0, float("inf"), 2.0] * 30_000), None, 3, value_dtype=torch.bfloat16, index_bits=16
    )
    assert bool(compressor.nonfinite_in(message.unsqueeze(0), 90_000, torch.float32))


@requires_cuda
@pytest.mark.parametrize("dtype,value_dtype,index_bits", FORMATS, ids=str)
def test_cuda_formats_match_cpu_exactly(dtype, value_dtype, index_bits):
    numel, k = 300_007, 3_000
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(numel, generator=gen).to(dtype)
    g[5] = float("nan")
    h_cpu = torch.randn(numel, generator=gen).to(dtype)
    h_cuda = h_cpu.cuda()
    msg_cpu = ops.topk_encode_(g, h_cpu, k, 0.5, value_dtype=value_dtype, index_bits=index_bits)
    msg_cuda = ops.topk_encode_(g.cuda(), h_cuda, k, 0.5, value_dtype=value_dtype, index_bits=index_bits)
    assert torch.equal(msg_cuda.cpu(), msg_cpu) and torch.equal(h_cuda.cpu(), h_cpu)
    gathered = torch.stack(
        [msg_cpu, ops.topk_encode_(g.flip(0), None, k, value_dtype=value_dtype, index_bits=index_bits)]
    )
    out_cpu = torch.randn(numel, generator=gen).to(dtype)
    out_cuda = out_cpu.cuda()
    ops.topk_decode_add_(out_cpu, gathered, k, 1.0, None, value_dtype, index_bits)
    ops.topk_decode_add_(out_cuda, gathered.cuda(), k, 1.0, None, value_dtype, index_bits)
    assert torch.equal(out_cuda.cpu(), out_cpu)
