"""The ops against brute-force references, opcheck, error messages, and CUDA-vs-CPU parity."""
import pytest
import torch
from conftest import DEVICES, DTYPES, requires_cuda
from reference import (
    clip21_encode,
    decode_add,
    dense_decode_add,
    ef21_encode,
    ef21_sgdm_encode,
    ef_encode,
    econtrol_encode,
    adacgd_choose,
    lazy_trigger,
    topk_indices,
    unpack,
)

from efcomm import ops

SIZES_AND_K = [(1, 1), (7, 1), (7, 7), (769, 1), (769, 77), (769, 769), (2**20 + 3, 1), (2**20 + 3, 10486)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", SIZES_AND_K)
def test_topk_matches_reference(numel, k, dtype):
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel + k)).to(dtype)
    values, indices = ops.topk(x, k)
    assert indices.dtype == torch.int32 and values.dtype == dtype
    expected = topk_indices(x, k)
    assert torch.equal(indices.long(), expected)
    assert torch.equal(values, x[expected])


def test_topk_ties_go_to_lower_index_and_nan_ranks_first():
    x = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0])
    assert ops.topk(x, 3)[1].tolist() == [1, 2, 4]
    y = torch.tensor([1.0, float("inf"), float("nan"), -float("inf"), 3.0])
    assert ops.topk(y, 2)[1].tolist() == [1, 2]
    assert ops.topk(y, 3)[1].tolist() == [1, 2, 3]
    same = torch.full((10,), -0.5)
    values, indices = ops.topk(same, 4)
    assert indices.tolist() == [0, 1, 2, 3] and values.tolist() == [-0.5] * 4


def test_topk_non_contiguous_and_multidimensional():
    base = torch.randn(40, 30, generator=torch.Generator().manual_seed(1))
    x = base.t()
    assert not x.is_contiguous()
    values, indices = ops.topk(x, 17)
    expected = topk_indices(x.contiguous(), 17)
    assert torch.equal(indices.long(), expected)
    assert torch.equal(values, x.reshape(-1)[expected])
    strided = torch.randn(100)[::3]
    assert torch.equal(ops.topk(strided, 5)[1].long(), topk_indices(strided.contiguous(), 5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 3), (769, 8), (2**20 + 3, 10486)])
def test_ef21_encode_matches_reference(numel, k, dtype):
    gen = torch.Generator().manual_seed(numel)
    g = torch.randn(numel, generator=gen).to(dtype)
    h_local = torch.randn(numel, generator=gen).to(dtype)
    d, idx, expected_h = ef21_encode(g, h_local, k)
    message = ops.ef21_topk_encode_(g, h_local, k)
    assert message.dtype == torch.uint8 and message.numel() == ops.topk_message_nbytes(k, dtype)
    values, indices = unpack(message, k, dtype)
    assert torch.equal(indices.long(), idx)
    assert torch.equal(values, d[idx])
    assert torch.equal(h_local, expected_h)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 3), (769, 8), (769, 769), (2**20 + 3, 10486)])
def test_topk_encode_and_ef_encode_match_reference(numel, k, dtype):
    gen = torch.Generator().manual_seed(numel + 1)
    g = torch.randn(numel, generator=gen).to(dtype)
    values, indices = unpack(ops.topk_encode(g, k), k, dtype)
    expected = topk_indices(g, k)
    assert torch.equal(indices.long(), expected) and torch.equal(values, g[expected])

    e = torch.randn(numel, generator=gen).to(dtype)
    p, idx, expected_e = ef_encode(g, e, k)
    values, indices = unpack(ops.ef_topk_encode_(g, e, k), k, dtype)
    assert torch.equal(indices.long(), idx) and torch.equal(values, p[idx])
    assert torch.equal(e, expected_e)
    assert torch.all(e[idx] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 3), (769, 8), (2**20 + 3, 10486)])
def test_momentum_and_econtrol_encodes_match_reference(numel, k, dtype):
    gen = torch.Generator().manual_seed(numel + 2)
    g, v, h_local, e = (torch.randn(numel, generator=gen).to(dtype) for _ in range(4))

    d, idx, expected_v, expected_h = ef21_sgdm_encode(g, v, h_local, k, 0.1)
    v2, h2 = v.clone(), h_local.clone()
    values, indices = unpack(ops.ef21_sgdm_topk_encode_(g, v2, h2, k, 0.1), k, dtype)
    assert torch.equal(indices.long(), idx) and torch.equal(values, d[idx])
    assert torch.equal(v2, expected_v) and torch.equal(h2, expected_h)

    p, idx, expected_e, expected_h = econtrol_encode(g, e, h_local, k, 0.3)
    e3, h3 = e.clone(), h_local.clone()
    values, indices = unpack(ops.econtrol_topk_encode_(g, e3, h3, k, 0.3), k, dtype)
    assert torch.equal(indices.long(), idx) and torch.equal(values, p[idx])
    assert torch.equal(e3, expected_e) and torch.equal(h3, expected_h)


def test_sgdm_with_eta_one_is_ef21_and_econtrol_with_eta_zero_is_ef21():
    g, h_local = torch.randn(300), torch.randn(300)
    h_ef21, h_sgdm, h_econtrol = h_local.clone(), h_local.clone(), h_local.clone()
    m_ef21 = ops.ef21_topk_encode_(g, h_ef21, 17)
    assert torch.equal(ops.ef21_sgdm_topk_encode_(g, torch.randn(300), h_sgdm, 17, 1.0), m_ef21)
    assert torch.equal(ops.econtrol_topk_encode_(g, torch.randn(300), h_econtrol, 17, 0.0), m_ef21)
    assert torch.equal(h_sgdm, h_ef21) and torch.equal(h_econtrol, h_ef21)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 769])
@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e6])
def test_clip21_encode_and_dense_decode_match_reference(numel, tau, dtype):
    gen = torch.Generator().manual_seed(numel)
    g, h_local = (torch.randn(numel, generator=gen).to(dtype) for _ in range(2))
    c, expected_h = clip21_encode(g, h_local, tau)
    message = ops.clip21_encode_(g, h_local, tau)
    value_bytes = numel * g.element_size()
    assert message.numel() == (value_bytes + 3) // 4 * 4
    assert torch.equal(message[:value_bytes].view(dtype), c)
    assert torch.equal(h_local, expected_h)
    assert c.float().norm() <= tau * (1 + 1e-2)  # bounded sensitivity, up to dtype rounding

    rows = [ops.clip21_encode_(torch.randn(numel, generator=gen).to(dtype), torch.zeros(numel, dtype=dtype), tau) for _ in range(3)]
    h = torch.randn(numel, generator=gen).to(dtype)
    expected = dense_decode_add(h, [r[:value_bytes].view(dtype) for r in rows])
    ops.dense_decode_add_(h, torch.stack(rows))
    assert torch.equal(h, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 769, 2**20 + 3])
def test_lazy_trigger_and_lag_encode_match_reference(numel, dtype):
    gen = torch.Generator().manual_seed(numel)
    g, h_local, y = (torch.randn(numel, generator=gen).to(dtype) for _ in range(3))
    for zeta in (0.0, 0.5, 1.0, 2.0):
        fired = ops.lazy_trigger(g, h_local, y, zeta)
        assert fired.dtype == torch.bool and fired.dim() == 0
        assert bool(fired) == lazy_trigger(g, h_local, y, zeta)
    assert bool(ops.lazy_trigger(g, g, y, 0.0)) is False  # nothing left to send
    d = (g.float() - h_local.float()).to(dtype)
    expected_h = (h_local.float() + d.float()).to(dtype)
    message = ops.lag_encode_(g, h_local)
    assert torch.equal(message[: numel * g.element_size()].view(dtype), d)
    assert torch.equal(h_local, expected_h)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,ks", [(1, [1]), (7, [1, 3, 7]), (769, [1, 8, 77, 400])])
def test_adacgd_choose_matches_reference(numel, ks, dtype):
    gen = torch.Generator().manual_seed(numel)
    g, h_local, y = (torch.randn(numel, generator=gen).to(dtype) for _ in range(3))
    seen = set()
    for zeta in (0.0, 0.05, 0.2, 0.5, 0.9, 1.5, 4.0):
        choice = ops.adacgd_choose(g, h_local, y, ks, zeta)
        assert choice.dtype == torch.int32 and choice.dim() == 0
        assert int(choice) == adacgd_choose(g, h_local, y, ks, zeta), zeta
        seen.add(int(choice))
    if numel == 769:
        assert len(seen) >= 3  # the sweep of zeta exercises several rungs and silence
    with pytest.raises(RuntimeError, match=r"must be strictly increasing"):
        ops.adacgd_choose(g, h_local, y, [2, 2] if numel > 1 else [1, 1], 1.0)


def test_dense_decode_divides_by_the_group_size_when_given():
    rows = torch.stack([ops.lag_encode_(torch.full((5,), 2.0), torch.zeros(5))])
    h = torch.zeros(5)
    ops.dense_decode_add_(h, rows, 4)  # one sender in a group of four
    assert torch.equal(h, torch.full((5,), 0.5))


def test_ef21_encode_accepts_non_contiguous_gradient():
    g = torch.randn(64, 2)[:, 0]
    h_local = torch.zeros(64)
    message = ops.ef21_topk_encode_(g, h_local, 5)
    _, indices = unpack(message, 5, torch.float32)
    assert torch.equal(indices.long(), topk_indices(g.contiguous(), 5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", [1, 3, 8])
def test_decode_matches_reference(world, dtype):
    numel, k = 769, 40
    gen = torch.Generator().manual_seed(world)
    messages, pairs = [], []
    for _ in range(world):
        g = torch.randn(numel, generator=gen).to(dtype)
        message = ops.ef21_topk_encode_(g, torch.zeros(numel, dtype=dtype), k)
        messages.append(message)
        pairs.append(unpack(message, k, dtype))
    h = torch.randn(numel, generator=gen).to(dtype)
    weights = torch.rand(world, generator=gen).tolist()
    h_weighted = h.clone()
    expected = decode_add(h, pairs)
    ops.topk_decode_add_(h, torch.stack(messages), k)
    assert torch.equal(h, expected)
    expected = decode_add(h_weighted, pairs, weights)
    ops.topk_decode_add_(h_weighted, torch.stack(messages), k, weights)
    assert torch.equal(h_weighted, expected)


def test_message_layout_is_padded_to_four_bytes():
    assert ops.topk_message_nbytes(1, torch.float32) == 8
    assert ops.topk_message_nbytes(1, torch.float16) == 8
    assert ops.topk_message_nbytes(3, torch.bfloat16) == 20
    assert ops.topk_message_nbytes(1000, torch.float32) == 8000


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        g = torch.randn(97, generator=gen).to(dtype).to(device)
        h_local = torch.randn(97, generator=gen).to(dtype).to(device)
        gathered = torch.stack([ops.ef21_topk_encode_(g, h_local.clone(), 9) for _ in range(3)])
        yield "topk", (g, 9)
        yield "topk_encode", (g, 9)
        yield "ef_topk_encode_", (g, h_local, 9)
        yield "ef21_sgdm_topk_encode_", (g, h_local.clone(), h_local.clone(), 9, 0.1)
        yield "econtrol_topk_encode_", (g, h_local.clone(), h_local.clone(), 9, 0.2)
        yield "ef21_topk_encode_", (g, h_local, 9)
        hint = lambda: torch.tensor([0.5, 0.0], device=device)  # noqa: E731  (a threshold hint)
        yield "topk", (g, 9, hint())
        yield "topk_encode", (g, 9, hint())
        yield "ef_topk_encode_", (g, h_local.clone(), 9, hint())
        yield "ef21_topk_encode_", (g, h_local.clone(), 9, hint())
        yield "ef21_sgdm_topk_encode_", (g, h_local.clone(), h_local.clone(), 9, 0.1, hint())
        yield "econtrol_topk_encode_", (g, h_local.clone(), h_local.clone(), 9, 0.2, hint())
        yield "topk_decode_add_", (torch.randn(97, generator=gen).to(dtype).to(device), gathered, 9)
        yield "topk_decode_add_", (torch.randn(97, generator=gen).to(dtype).to(device), gathered, 9, [0.5, 0.25, 0.25])
        yield "clip21_encode_", (g, h_local.clone(), 0.5)
        dense = torch.stack([ops.clip21_encode_(g, h_local.clone(), 0.5) for _ in range(2)])
        yield "dense_decode_add_", (torch.randn(97, generator=gen).to(dtype).to(device), dense)
        yield "dense_decode_add_", (torch.randn(97, generator=gen).to(dtype).to(device), dense, 5)
        yield "lag_encode_", (g, h_local.clone())
        yield "lazy_trigger", (g, h_local, h_local.flip(0), 0.5)
        yield "adacgd_choose", (g, h_local, h_local.flip(0), [2, 9, 40], 0.5)
        yield "motef_track_", (g, h_local.clone(), h_local.clone(), h_local.flip(0), h_local * 0.5, 0.9, 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    checked = set()
    for name, args in _opcheck_samples(device):
        torch.library.opcheck(getattr(torch.ops.efcomm, name).default, args)
        checked.add(name)
    assert checked == {
        "topk", "topk_encode", "ef_topk_encode_", "ef21_topk_encode_", "ef21_sgdm_topk_encode_",
        "econtrol_topk_encode_", "topk_decode_add_", "clip21_encode_", "dense_decode_add_",
        "lag_encode_", "lazy_trigger", "adacgd_choose", "motef_track_",
    }


def test_ops_trace_under_torch_compile():
    def step(g, h_local, h, k: int):
        message = ops.ef21_topk_encode_(g, h_local, k)
        ops.topk_decode_add_(h, message.unsqueeze(0), k)
        return message

    g = torch.randn(257)
    eager_hl, eager_h = torch.zeros(257), torch.zeros(257)
    compiled_hl, compiled_h = torch.zeros(257), torch.zeros(257)
    expected = step(g, eager_hl, eager_h, 11)
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(g, compiled_hl, compiled_h, 11)
    assert torch.equal(got, expected)
    assert torch.equal(compiled_hl, eager_hl) and torch.equal(compiled_h, eager_h)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: ops.topk(torch.randn(5), 0), r"topk: k \(0\) must be at least 1"),
        (lambda: ops.topk(torch.randn(5), 6), r"k \(6\) exceeds the number of elements \(5\)"),
        (lambda: ops.topk(torch.arange(5), 1), r"x has dtype Long"),
        (lambda: ops.topk(torch.randn(5, dtype=torch.float64), 1), r"x has dtype Double"),
        (lambda: ops.ef21_topk_encode_(torch.randn(8), torch.zeros(9), 2), r"h_local has shape \[9\] but g has shape \[8\]"),
        (lambda: ops.ef21_topk_encode_(torch.randn(8), torch.zeros(8, dtype=torch.half), 2), r"h_local has dtype Half"),
        (lambda: ops.ef21_topk_encode_(torch.randn(8), torch.zeros(16)[::2], 2), r"h_local .* must be contiguous"),
        (lambda: ops.ef21_topk_encode_(torch.randn(8), torch.zeros(8), 9), r"k \(9\) exceeds"),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(2, 12, dtype=torch.uint8), 2), r"gathered rows have 12 bytes .* 16 bytes"),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(2, 16), 2), r"gathered has dtype Float; expected uint8"),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(16, dtype=torch.uint8), 2), r"gathered must be 2-D"),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(1, 17, dtype=torch.uint8)[:, 1:], 2), r"gathered must start at a 4-byte aligned address \(storage offset 1\)"),
        (lambda: ops.topk_message_nbytes(0, torch.float32), r"k \(0\) must be at least 1"),
        (lambda: ops.topk_encode(torch.randn(4), 5), r"topk_encode: k \(5\) exceeds"),
        (lambda: ops.ef_topk_encode_(torch.randn(8), torch.zeros(7), 2), r"ef_topk_encode_: e has shape \[7\]"),
        (lambda: ops.ef21_sgdm_topk_encode_(torch.randn(8), torch.zeros(8), torch.zeros(8), 2, 1.5), r"eta \(1.5\) must be in \[0, 1\]"),
        (lambda: ops.econtrol_topk_encode_(torch.randn(8), torch.zeros(8), torch.zeros(4), 2, 0.1), r"h_local has shape \[4\]"),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(2, 16, dtype=torch.uint8), 2, [1.0]), r"weights has 1 entries but gathered holds 2"),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(1, 16, dtype=torch.uint8), 2, [float("nan")]), r"weights holds a non-finite value"),
        (lambda: ops.clip21_encode_(torch.randn(8), torch.zeros(8), 0.0), r"clip21_encode_: tau \(0\) must be positive"),
        (lambda: ops.lazy_trigger(torch.randn(8), torch.zeros(8), torch.zeros(8), -1.0), r"lazy_trigger: zeta \(-1\) must be non-negative"),
        (lambda: ops.lazy_trigger(torch.randn(8), torch.zeros(8), torch.zeros(9), 1.0), r"lazy_trigger: y has shape \[9\]"),
        (lambda: ops.dense_decode_add_(torch.zeros(8), torch.zeros(2, 32, dtype=torch.uint8), 1), r"world_size \(1\) is smaller than the number of gathered messages \(2\)"),
        (lambda: ops.dense_decode_add_(torch.zeros(8), torch.zeros(2, 16, dtype=torch.uint8)), r"gathered rows have 16 bytes but a dense message of 8 Float values has 32 bytes"),
    ],
)
def test_bad_arguments_raise_errors_naming_them(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_decode_leaves_entries_no_message_names_untouched():
    h = torch.tensor([-0.0, float("nan"), 1.0, -0.0, 2.0, float("inf"), 3.0, 4.0])
    message = ops.ef21_topk_encode_(torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, -6.0]), torch.zeros(8), 2)
    out = h.clone()
    ops.topk_decode_add_(out, torch.stack([message, message]), 2)
    assert out.view(torch.int32)[[0, 1, 2, 3, 5, 6]].tolist() == h.view(torch.int32)[[0, 1, 2, 3, 5, 6]].tolist()
    assert out[[4, 7]].tolist() == [7.0, -2.0]


def test_decode_rejects_indices_out_of_order():
    message = ops.ef21_topk_encode_(torch.tensor([0.0, 3.0, 0.0, 4.0]), torch.zeros(4), 2)
    message[8:16].view(torch.int32).copy_(torch.tensor([3, 1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"message of rank 0 holds indices out of ascending order \(3 then 1 at position 1\)"):
        ops.topk_decode_add_(torch.zeros(4), message.unsqueeze(0), 2)


def test_decode_rejects_corrupt_index():
    message = ops.ef21_topk_encode_(torch.arange(8.0), torch.zeros(8), 1)
    message[4:8].view(torch.int32).fill_(99)
    with pytest.raises(RuntimeError, match=r"holds index 99 outside \[0, 8\)"):
        ops.topk_decode_add_(torch.zeros(8), message.unsqueeze(0), 1)


# The CUDA Top-k selection: the radix select of kernels/topk_select.cu (the default) and
# the stable sort it replaced (EFCOMM_TOPK_SELECT=sort), both held to the CPU reference.
SELECTIONS = ["radix", "sort"]


@requires_cuda
@pytest.mark.parametrize("select", SELECTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", SIZES_AND_K + [(2**27, 2**27 // 100)])
def test_cuda_topk_and_ef21_match_cpu_exactly(numel, k, dtype, select, monkeypatch):
    monkeypatch.setenv("EFCOMM_TOPK_SELECT", select)
    gen = torch.Generator().manual_seed(numel)
    g = torch.randn(numel, generator=gen).to(dtype)
    h_cpu = torch.randn(numel, generator=gen).to(dtype)
    h_gpu = h_cpu.cuda()
    v_cpu, i_cpu = ops.topk(g, k)
    v_gpu, i_gpu = ops.topk(g.cuda(), k)
    assert torch.equal(i_cpu, i_gpu.cpu()) and torch.equal(v_cpu, v_gpu.cpu())
    assert torch.equal(ops.topk_encode(g, k), ops.topk_encode(g.cuda(), k).cpu())
    for encode in (ops.ef21_topk_encode_, ops.ef_topk_encode_):
        m_cpu = encode(g, h_cpu, k)
        m_gpu = encode(g.cuda(), h_gpu, k)
        assert torch.equal(m_cpu, m_gpu.cpu())
        assert torch.equal(h_cpu, h_gpu.cpu())
    s_cpu = torch.randn(numel, generator=gen).to(dtype)
    s_gpu = s_cpu.cuda()
    for encode, eta in ((ops.ef21_sgdm_topk_encode_, 0.1), (ops.econtrol_topk_encode_, 0.3)):
        m_cpu = encode(g, s_cpu, h_cpu, k, eta)
        m_gpu = encode(g.cuda(), s_gpu, h_gpu, k, eta)
        assert torch.equal(m_cpu, m_gpu.cpu())
        assert torch.equal(h_cpu, h_gpu.cpu()) and torch.equal(s_cpu, s_gpu.cpu())


@requires_cuda
@pytest.mark.parametrize("select", SELECTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_topk_special_values_match_cpu(dtype, select, monkeypatch):
    monkeypatch.setenv("EFCOMM_TOPK_SELECT", select)
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), -float("inf"), 1.0, 2.0]).to(dtype)
    for k in range(1, x.numel() + 1):
        assert torch.equal(ops.topk(x, k)[1], ops.topk(x.cuda(), k)[1].cpu())


@requires_cuda
@pytest.mark.parametrize("select", SELECTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_topk_ties_and_crowded_bins_match_cpu(dtype, select, monkeypatch):
    """All-equal inputs (every entry ties), a few distinct values (one crowded boundary
    bin), many NaNs, and values that differ only in the low mantissa bits (the same
    histogram bin): the selection must still take the lowest indices among ties."""
    monkeypatch.setenv("EFCOMM_TOPK_SELECT", select)
    gen = torch.Generator().manual_seed(3)
    n = 100_003
    cases = [
        torch.ones(n),
        torch.randint(0, 3, (n,), generator=gen).float() - 1.0,
        torch.where(torch.rand(n, generator=gen) < 0.2, float("nan"), torch.randn(n, generator=gen)),
        1.0 + torch.randint(0, 64, (n,), generator=gen).float() * 2.0**-20,
    ]
    for x in cases:
        x = x.to(dtype)
        for k in (1, 7, 1000, n // 3, n):
            assert torch.equal(ops.topk(x, k)[1], ops.topk(x.cuda(), k)[1].cpu()), (k, x[:4])
            h = torch.zeros(n, dtype=dtype)
            h_gpu = h.cuda()
            assert torch.equal(ops.ef21_topk_encode_(x, h, k), ops.ef21_topk_encode_(x.cuda(), h_gpu, k).cpu())
            assert torch.equal(h, h_gpu.cpu())


def _message(values: torch.Tensor, indices: list) -> torch.Tensor:
    """A Top-k message of these values at these (ascending) indices."""
    k = len(indices)
    message = ops.ef21_topk_encode_(torch.ones(k, dtype=values.dtype), torch.zeros(k, dtype=values.dtype), k)
    message[-4 * k :].view(torch.int32).copy_(torch.tensor(indices, dtype=torch.int32))
    message[: k * values.element_size()].view(values.dtype).copy_(values)
    return message


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 4096, 4097, 12289])
def test_cuda_decode_across_tile_boundaries(numel, dtype):
    """The CUDA decode sums each 4096-entry tile in one block: indices on both sides of the
    tile edges, overlapping between ranks, k = 1 and k = numel."""
    gen = torch.Generator().manual_seed(numel)
    edges = sorted({i for e in (0, 4095, 4096, 8191, 8192, 12288) for i in (e - 1, e, e + 1) if 0 <= i < numel})
    half = max(1, len(edges) // 2)
    subsets = [sorted(torch.randperm(len(edges), generator=gen)[:half].tolist()) for _ in range(5)]
    cases = (
        [[edges[-1]]] * 3,  # k = 1, every rank names the same entry
        [[edges[i] for i in subset] for subset in subsets],  # overlapping subsets of the edges
        [list(range(numel))] * 2,  # k = numel
    )
    for ranks in cases:
        k = len(ranks[0])
        messages = torch.stack([_message(torch.randn(k, generator=gen).to(dtype), indices) for indices in ranks])
        h = torch.randn(numel, generator=gen).to(dtype)
        h_gpu = h.cuda()
        ops.topk_decode_add_(h, messages, k)
        ops.topk_decode_add_(h_gpu, messages.cuda(), k)
        assert torch.equal(h.view(torch.uint8), h_gpu.cpu().view(torch.uint8)), ranks


@requires_cuda
def test_cuda_decode_of_a_malformed_message_does_not_crash():
    """The CPU reference raises on indices out of order or range; the CUDA decode (no host
    read) skips what it cannot place and never touches memory outside h."""
    message = _message(torch.tensor([1.0, 2.0, 3.0]), [1, 2, 3])
    message[-12:].view(torch.int32).copy_(torch.tensor([9000, -5, 2], dtype=torch.int32))
    h = torch.zeros(8, device="cuda")
    ops.topk_decode_add_(h, message.unsqueeze(0).cuda(), 3)
    torch.cuda.synchronize()
    assert torch.isfinite(h).all() and h.abs().sum() <= 3.0


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", [1, 2, 8, 64])
def test_cuda_decode_matches_cpu_exactly(world, dtype):
    numel, k = 2**20 + 3, 10486
    gen = torch.Generator().manual_seed(world)
    messages = torch.stack(
        [ops.ef21_topk_encode_(torch.randn(numel, generator=gen).to(dtype), torch.zeros(numel, dtype=dtype), k) for _ in range(world)]
    )
    h = torch.randn(numel, generator=gen).to(dtype)
    h_gpu = h.cuda()
    ops.topk_decode_add_(h, messages, k)
    ops.topk_decode_add_(h_gpu, messages.cuda(), k)
    assert torch.equal(h, h_gpu.cpu())
    weights = torch.rand(world, generator=gen).tolist()
    ops.topk_decode_add_(h, messages, k, weights)
    ops.topk_decode_add_(h_gpu, messages.cuda(), k, weights)
    assert torch.equal(h, h_gpu.cpu())


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 769, 2**20 + 3])
def test_cuda_clip21_matches_cpu_within_tolerance(numel, dtype):
    """The clip factor comes from a norm reduced in another order on the GPU: c agrees with
    the CPU to a relative 1e-6 (plus one unit of the dtype's rounding); the dense decode,
    an elementwise sum in rank order, agrees exactly."""
    gen = torch.Generator().manual_seed(numel)
    g = torch.randn(numel, generator=gen).to(dtype)
    h_cpu = torch.randn(numel, generator=gen).to(dtype)
    h_gpu = h_cpu.cuda()
    m_cpu = ops.clip21_encode_(g, h_cpu, 0.5)
    m_gpu = ops.clip21_encode_(g.cuda(), h_gpu, 0.5)
    value_bytes = numel * g.element_size()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(m_gpu[:value_bytes].view(dtype).cpu(), m_cpu[:value_bytes].view(dtype), rtol=1e-6 + eps, atol=0)
    other = ops.clip21_encode_(torch.randn(numel, generator=gen).to(dtype), torch.zeros(numel, dtype=dtype), 0.5)
    rows = torch.stack([m_cpu, other])
    h = torch.randn(numel, generator=gen).to(dtype)
    h_gpu = h.cuda()
    ops.dense_decode_add_(h, rows)
    ops.dense_decode_add_(h_gpu, rows.cuda())
    assert torch.equal(h, h_gpu.cpu())


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_lazy_ops_match_cpu(dtype):
    """lag_encode_ is exact; the trigger sums in another order on the GPU, so it is compared
    away from its boundary (zeta far from the ratio of the two norms)."""
    gen = torch.Generator().manual_seed(3)
    g, h, y = (torch.randn(2**20 + 3, generator=gen).to(dtype) for _ in range(3))
    ratio = float(((g.float() - h.float()).double().pow(2).sum() / (g.float() - y.float()).double().pow(2).sum()))
    for zeta in (0.5 * ratio, 2.0 * ratio):
        assert bool(ops.lazy_trigger(g, h, y, zeta)) == bool(ops.lazy_trigger(g.cuda(), h.cuda(), y.cuda(), zeta))
    h_gpu = h.cuda()
    assert torch.equal(ops.lag_encode_(g, h), ops.lag_encode_(g.cuda(), h_gpu).cpu())
    assert torch.equal(h, h_gpu.cpu())


# Threshold Top-k: the hint every Top-k op reads and rewrites (kernels/topk_hint.h).


def _hinted_calls(k):
    """(name, fn(x, state, hint) -> what the op returns and changes) for every Top-k op."""
    return [
        ("topk", lambda x, s, t: ops.topk(x, k, t)),
        ("topk_encode", lambda x, s, t: ops.topk_encode(x, k, t)),
        ("ef_topk_encode_", lambda x, s, t: (ops.ef_topk_encode_(x, s[0], k, t), s[0])),
        ("ef21_topk_encode_", lambda x, s, t: (ops.ef21_topk_encode_(x, s[0], k, t), s[0])),
        ("ef21_sgdm_topk_encode_", lambda x, s, t: (ops.ef21_sgdm_topk_encode_(x, s[0], s[1], k, 0.3, t), s[0], s[1])),
        ("econtrol_topk_encode_", lambda x, s, t: (ops.econtrol_topk_encode_(x, s[0], s[1], k, 0.1, t), s[0], s[1])),
    ]


def _flat(out):
    return [t.view(torch.uint8) for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold_hint_leaves_every_op_exact_and_follows_the_kth_magnitude(device, dtype):
    numel, k = 5000, 50
    for index, (name, call) in enumerate(_hinted_calls(k)):
        gen = torch.Generator().manual_seed(index)
        base = torch.randn(numel, generator=gen)
        states = [torch.randn(numel, generator=gen).to(dtype).to(device) for _ in range(2)]
        plain_states = [s.clone() for s in states]
        hint = ops.topk_threshold_hint(device)
        for step in range(4):
            x = (base + 0.05 * step * torch.randn(numel, generator=gen)).to(dtype).to(device)
            with_hint = _flat(call(x, states, hint))
            without = _flat(call(x, plain_states, None))
            assert all(torch.equal(a, b) for a, b in zip(with_hint, without)), (name, step)
            # The k-th largest of what the op ranked: recompute it from the message's values.
            if name == "topk":
                values = call(x, [s.clone() for s in plain_states], None)[0]
            else:
                message = with_hint[0]
                values = message[: k * x.element_size()].view(dtype)
            kth = values.float().abs().min()
            assert hint[0].item() == torch.tensor(0.95, dtype=torch.float32).mul(kth).item(), (name, step)
            # First call: no hint, every entry a candidate, more than 4k of them: two passes.
            # Then, on slowly drifting inputs, between k and 4k reach the hint. (The error-
            # feedback ops rank a vector that shifts more: their flag is not predicted here.)
            if name in ("topk", "topk_encode") or step == 0:
                assert hint[1].item() == (1.0 if step == 0 else 0.0), (name, step, hint)


def test_threshold_hint_falls_back_and_resets():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    hint = torch.tensor([100.0, 0.0])  # nothing reaches it: fewer than k candidates
    exact = ops.topk(x, 10)
    assert all(torch.equal(a, b) for a, b in zip(ops.topk(x, 10, hint), exact))
    assert hint[1].item() == 1.0 and 0.0 < hint[0].item() < 100.0
    hint = torch.tensor([1e-6, 0.0])  # everything reaches it: more than 4k
    ops.topk(x, 10, hint)
    assert hint[1].item() == 1.0
    ops.topk(x, 10, hint)
    assert hint[1].item() == 0.0  # the updated hint finds between k and 4k
    y = x.clone()
    y[:10] = float("nan")  # the k-th largest is NaN: no threshold for the next call
    ops.topk(y, 10, hint)
    assert hint.tolist() == [0.0, 0.0]
    small = torch.randn(7)
    hint = ops.topk_threshold_hint()
    ops.topk(small, 7, hint)  # cap = min(n, 4k) = n: every entry is a candidate, no fallback
    assert hint[1].item() == 0.0


@pytest.mark.parametrize(
    "hint,pattern",
    [
        (torch.zeros(2, dtype=torch.float64), r"topk: threshold has dtype Double; expected float32"),
        (torch.zeros(3), r"topk: threshold must be a contiguous tensor of 2 elements .* got shape \[3\]"),
        (torch.zeros(4)[::2], r"topk: threshold must be a contiguous tensor of 2 elements"),
    ],
)
def test_threshold_hint_bad_arguments(hint, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        ops.topk(torch.randn(8), 2, hint)


@requires_cuda
def test_threshold_hint_on_another_device_is_rejected():
    with pytest.raises(RuntimeError, match=r"ef21_topk_encode_: threshold is on cpu but x is on cuda:0"):
        ops.ef21_topk_encode_(torch.randn(8, device="cuda"), torch.zeros(8, device="cuda"), 2, torch.zeros(2))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 3), (769, 77), (2**20 + 3, 10486)])
def test_cuda_threshold_path_matches_cpu_exactly(numel, k, dtype):
    """The one-pass path (k <= candidates <= 4k), both fallbacks and the hint's bits, against
    the CPU reference, for every Top-k op; ties and NaNs included."""
    gen = torch.Generator().manual_seed(numel)
    for index, (name, call) in enumerate(_hinted_calls(k)):
        base = torch.randn(numel, generator=gen)
        states = [torch.randn(numel, generator=gen).to(dtype) for _ in range(2)]
        states_gpu = [s.cuda() for s in states]
        hint, hint_gpu = ops.topk_threshold_hint(), ops.topk_threshold_hint("cuda")
        for step in range(5):
            x = base + 0.05 * step * torch.randn(numel, generator=gen)
            if step == 3:
                x = x.round()  # many ties
            if step == 4 and numel > 8:
                x[::97] = float("nan")
                hint.fill_(0.5), hint_gpu.fill_(0.5)
            x = x.to(dtype)
            got = _flat(call(x.cuda(), states_gpu, hint_gpu))
            want = _flat(call(x, states, hint))
            assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), (name, step)
            assert torch.equal(hint_gpu.cpu(), hint), (name, step, hint, hint_gpu)


def _motef_track_reference(g, M, V, G, G_mean, lam, gamma):
    """The rule of csrc/ops.h with float32 tensors: every op rounded on its own."""
    f = lambda t: t.float()  # noqa: E731
    lam32, gamma32 = torch.tensor(lam, dtype=torch.float32), torch.tensor(gamma, dtype=torch.float32)
    step = lam32 * (f(g) - f(M))
    gossip = gamma32 * (f(G_mean) - f(G))
    return (f(M) + step).to(M.dtype), ((f(V) + step) + gossip).to(V.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_motef_track_matches_reference(device, dtype):
    gen = torch.Generator().manual_seed(7)
    g, M, V, G, G_mean = (torch.randn(2**12 + 5, generator=gen).to(dtype).to(device) for _ in range(5))
    want_M, want_V = _motef_track_reference(g.cpu(), M.cpu(), V.cpu(), G.cpu(), G_mean.cpu(), 0.3, 0.2)
    ops.motef_track_(g, M, V, G, G_mean, 0.3, 0.2)
    assert torch.equal(M.cpu(), want_M) and torch.equal(V.cpu(), want_V)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_motef_track_matches_cpu_exactly(dtype):
    gen = torch.Generator().manual_seed(8)
    tensors = [torch.randn(2**20 + 3, generator=gen).to(dtype) for _ in range(5)]
    gpu = [t.cuda() for t in tensors]
    ops.motef_track_(*tensors, 0.9, 0.1)
    ops.motef_track_(gpu[0][::1], *gpu[1:], 0.9, 0.1)
    assert torch.equal(tensors[1], gpu[1].cpu()) and torch.equal(tensors[2], gpu[2].cpu())


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda t: ops.motef_track_(t, t.clone(), t.clone(), t, torch.zeros(3), 0.9, 0.1), r"motef_track_: G_mean has shape \[3\] but g has shape \[8\]"),
        (lambda t: ops.motef_track_(t, t.clone(), t.clone(), t, t, 0.0, 0.1), r"motef_track_: lam \(0\) must be in \(0, 1\]"),
        (lambda t: ops.motef_track_(t, t.clone(), t.clone(), t, t, 0.5, 1.5), r"motef_track_: gamma \(1.5\) must be in \(0, 1\]"),
        (lambda t: ops.motef_track_(t, t.clone().double(), t.clone(), t, t, 0.5, 0.5), r"motef_track_: M has dtype Double"),
    ],
)
def test_motef_track_bad_arguments(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call(torch.randn(8))
