"""The Top-k, dense and method ops against brute-force references, the canonical NaN, opcheck
on every op, error messages, and CUDA-vs-CPU parity. (Quantizer and Rand-k ops:
test_quant_ops.py.)"""

import pytest
import torch
from compositions import econtrol_step, ef21_sgdm_step, ef_step
from conftest import DEVICES, DTYPES
from reference import (
    adacgd_choose,
    clip21_encode,
    decode_add,
    dense_decode_add,
    ef21_encode,
    ef21_sgdm_encode,
    ef_encode,
    econtrol_encode,
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
    for scale in (1.0, 0.375):
        d, idx, expected_h = ef21_encode(g, h_local, k, scale)
        message = ops.topk_encode_(g, h_local, k, scale)
        assert message.dtype == torch.uint8 and message.numel() == ops.message_nbytes("topk", numel, dtype, k=k)
        values, indices = unpack(message, k, dtype)
        assert torch.equal(indices.long(), idx)
        assert torch.equal(values, d[idx])  # unscaled
        assert torch.equal(h_local, expected_h)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 3), (769, 8), (769, 769), (2**20 + 3, 10486)])
def test_topk_encode_and_ef_encode_match_reference(numel, k, dtype):
    gen = torch.Generator().manual_seed(numel + 1)
    g = torch.randn(numel, generator=gen).to(dtype)
    values, indices = unpack(ops.topk_encode_(g, None, k), k, dtype)
    expected = topk_indices(g, k)
    assert torch.equal(indices.long(), expected) and torch.equal(values, g[expected])

    e = torch.randn(numel, generator=gen).to(dtype)
    p, idx, expected_e = ef_encode(g, e, k)
    values, indices = unpack(ef_step(g, e, k), k, dtype)
    assert torch.equal(indices.long(), idx) and torch.equal(values, p[idx])
    assert torch.equal(e, expected_e)
    assert torch.all(e[idx] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,k", [(1, 1), (7, 3), (769, 8), (2**20 + 3, 10486)])
def test_momentum_and_econtrol_compositions_match_reference(numel, k, dtype):
    gen = torch.Generator().manual_seed(numel + 2)
    g, v, h_local, e = (torch.randn(numel, generator=gen).to(dtype) for _ in range(4))

    d, idx, expected_v, expected_h = ef21_sgdm_encode(g, v, h_local, k, 0.1)
    v2, h2 = v.clone(), h_local.clone()
    values, indices = unpack(ef21_sgdm_step(g, v2, h2, k, 0.1), k, dtype)
    assert torch.equal(indices.long(), idx) and torch.equal(values, d[idx])
    assert torch.equal(v2, expected_v) and torch.equal(h2, expected_h)

    p, idx, expected_e, expected_h = econtrol_encode(g, e, h_local, k, 0.3)
    e3, h3 = e.clone(), h_local.clone()
    values, indices = unpack(econtrol_step(g, e3, h3, k, 0.3), k, dtype)
    assert torch.equal(indices.long(), idx) and torch.equal(values, p[idx])
    assert torch.equal(e3, expected_e) and torch.equal(h3, expected_h)


def test_sgdm_with_eta_one_is_ef21_and_econtrol_with_eta_zero_is_ef21():
    g, h_local = torch.randn(300), torch.randn(300)
    h_ef21, h_sgdm, h_econtrol = h_local.clone(), h_local.clone(), h_local.clone()
    m_ef21 = ops.topk_encode_(g, h_ef21, 17)
    assert torch.equal(ef21_sgdm_step(g, torch.randn(300), h_sgdm, 17, 1.0), m_ef21)
    assert torch.equal(econtrol_step(g, torch.randn(300), h_econtrol, 17, 0.0), m_ef21)
    assert torch.equal(h_sgdm, h_ef21) and torch.equal(h_econtrol, h_ef21)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 769])
@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e6])
def test_clipped_dense_encode_and_dense_decode_match_reference(numel, tau, dtype):
    gen = torch.Generator().manual_seed(numel)
    g, h_local = (torch.randn(numel, generator=gen).to(dtype) for _ in range(2))
    c, expected_h = clip21_encode(g, h_local, tau)
    message = ops.dense_encode_(g, h_local, clip=tau)
    value_bytes = numel * g.element_size()
    assert message.numel() == ops.message_nbytes("dense", numel, dtype) == (value_bytes + 3) // 4 * 4
    assert torch.equal(message[:value_bytes].view(dtype), c)
    assert torch.equal(h_local, expected_h)
    assert c.float().norm() <= tau * (1 + 1e-2)  # bounded sensitivity, up to dtype rounding

    rows = [ops.dense_encode_(torch.randn(numel, generator=gen).to(dtype), None, clip=tau) for _ in range(3)]
    values = [r[:value_bytes].view(dtype) for r in rows]
    for weights, scale in ((None, 1.0), ([0.5, -0.25, 2.0], 0.75), (None, -3.0)):
        h = torch.randn(numel, generator=gen).to(dtype)
        expected = dense_decode_add(h, values, weights, scale)
        w = None if weights is None else torch.tensor(weights)
        ops.dense_decode_add_(h, torch.stack(rows), scale, w)
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
    message = ops.dense_encode_(g, h_local)  # LAG's message
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


def test_dense_decode_with_weights_divides_by_the_group_size():
    rows = torch.stack([ops.dense_encode_(torch.full((5,), 2.0), torch.zeros(5))])
    h = torch.zeros(5)
    ops.dense_decode_add_(h, rows, weights=torch.tensor([0.25]))  # one sender in a group of four
    assert torch.equal(h, torch.full((5,), 0.5))


def test_topk_encode_accepts_non_contiguous_source():
    g = torch.randn(64, 2)[:, 0]
    h_local = torch.zeros(64)
    message = ops.topk_encode_(g, h_local, 5)
    _, indices = unpack(message, 5, torch.float32)
    assert torch.equal(indices.long(), topk_indices(g.contiguous(), 5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", [1, 3, 8])
def test_decode_matches_reference(world, dtype):
    numel, k = 769, 40
    gen = torch.Generator().manual_seed(world)
    messages, pairs = [], []
    for _ in range(world):
        message = ops.topk_encode_(torch.randn(numel, generator=gen).to(dtype), None, k)
        messages.append(message)
        pairs.append(unpack(message, k, dtype))
    weights = torch.rand(world, generator=gen)
    for w, scale in ((None, 1.0), (weights, 1.0), (None, 0.3), (weights, -2.5)):
        h = torch.randn(numel, generator=gen).to(dtype)
        expected = decode_add(h, pairs, None if w is None else w.tolist(), scale)
        ops.topk_decode_add_(h, torch.stack(messages), k, scale, w)
        assert torch.equal(h, expected)


# ---- opcheck, torch.compile, error messages ----


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        g = torch.randn(97, generator=gen).to(dtype).to(device)
        h_local = torch.randn(97, generator=gen).to(dtype).to(device)
        gathered = torch.stack([ops.topk_encode_(g, h_local.clone(), 9) for _ in range(3)])
        weights = torch.tensor([0.5, 0.25, 0.25], device=device)
        hint = lambda: torch.tensor([0.5, 0.0], device=device)  # noqa: E731  (a threshold hint)
        fresh = lambda: torch.randn(97, generator=gen).to(dtype).to(device)  # noqa: E731
        yield "topk", (g, 9)
        yield "topk", (g, 9, hint())
        yield "topk_encode_", (g, None, 9)
        yield "topk_encode_", (g, h_local.clone(), 9, 0.5)
        yield "topk_encode_", (g, h_local.clone(), 9, 1.0, hint())
        yield "topk_decode_add_", (fresh(), gathered, 9)
        yield "topk_decode_add_", (fresh(), gathered, 9, -1.0, weights)
        dense = torch.stack([ops.dense_encode_(g, h_local.clone(), 0.5) for _ in range(2)])
        yield "dense_encode_", (g, None)
        yield "dense_encode_", (g, h_local.clone(), 0.5)
        yield "dense_encode_", (g, h_local.clone(), None, 2.0)
        yield "dense_decode_add_", (fresh(), dense)
        yield "dense_decode_add_", (fresh(), dense, 0.5, weights[:2])
        yield "lazy_trigger", (g, h_local, h_local.flip(0), 0.5)
        yield "adacgd_choose", (g, h_local, h_local.flip(0), [2, 9, 40], 0.5)
        yield "motef_track_", (g, h_local.clone(), h_local.clone(), h_local.flip(0), h_local * 0.5, 0.9, 0.1)
        yield "message_nbytes", ("topk", 97, dtype, 9)
        yield "message_nbytes", ("quant", 97, dtype, 0, "int8", 0, 64)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    checked = set()
    for name, args in _opcheck_samples(device):
        torch.library.opcheck(getattr(torch.ops.efcomm, name).default, args)
        checked.add(name)
    assert checked == {
        "topk",
        "topk_encode_",
        "topk_decode_add_",
        "dense_encode_",
        "dense_decode_add_",
        "lazy_trigger",
        "adacgd_choose",
        "motef_track_",
        "message_nbytes",
    }


def test_ops_trace_under_torch_compile():
    def step(g, h_local, h, k: int):
        message = ops.topk_encode_(g, h_local, k)
        ops.topk_decode_add_(h, message.unsqueeze(0), k, 0.5)
        dense = ops.dense_encode_(g, h_local, 1.0)
        ops.dense_decode_add_(h, dense.unsqueeze(0))
        return message, ops.message_nbytes("topk", g.numel(), g.dtype, k=k)

    g = torch.randn(257)
    eager_hl, eager_h = torch.zeros(257), torch.zeros(257)
    compiled_hl, compiled_h = torch.zeros(257), torch.zeros(257)
    expected = step(g, eager_hl, eager_h, 11)
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(g, compiled_hl, compiled_h, 11)
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    assert torch.equal(compiled_hl, eager_hl) and torch.equal(compiled_h, eager_h)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: ops.topk(torch.randn(5), 0), r"topk: k \(0\) must be at least 1"),
        (lambda: ops.topk(torch.randn(5), 6), r"k \(6\) exceeds the number of elements \(5\)"),
        (lambda: ops.topk(torch.arange(5), 1), r"x has dtype Long"),
        (lambda: ops.topk(torch.randn(5, dtype=torch.float64), 1), r"x has dtype Double"),
        (
            lambda: ops.topk_encode_(torch.randn(8), torch.zeros(9), 2),
            r"topk_encode_: b has shape \[9\] but a has shape \[8\]",
        ),
        (
            lambda: ops.topk_encode_(torch.randn(8), torch.zeros(8, dtype=torch.half), 2),
            r"b has dtype Half but a has dtype Float",
        ),
        (
            lambda: ops.topk_encode_(torch.randn(8), torch.zeros(16)[::2], 2),
            r"b \(updated in place\) must be contiguous",
        ),
        (lambda: ops.topk_encode_(torch.randn(8), torch.zeros(8), 9), r"k \(9\) exceeds"),
        (lambda: ops.topk_encode_(torch.randn(4), None, 5), r"topk_encode_: k \(5\) exceeds"),
        (lambda: ops.topk_encode_(torch.arange(4), None, 1), r"topk_encode_: a has dtype Long"),
        (
            lambda: ops.topk_encode_(torch.randn(8), torch.zeros(8), 2, float("nan")),
            r"topk_encode_: scale \(nan\) must be finite",
        ),
        (
            lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(2, 12, dtype=torch.uint8), 2),
            r"gathered rows have 12 bytes .* 16 bytes",
        ),
        (
            lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(2, 16), 2),
            r"gathered has dtype Float; expected uint8",
        ),
        (lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(16, dtype=torch.uint8), 2), r"gathered must be 2-D"),
        (
            lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(1, 17, dtype=torch.uint8)[:, 1:], 2),
            r"gathered must start at a 4-byte aligned address \(storage offset 1\)",
        ),
        (
            lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(2, 16, dtype=torch.uint8), 2, 1.0, torch.ones(1)),
            r"weights has 1 entries but gathered holds 2",
        ),
        (
            lambda: ops.topk_decode_add_(
                torch.zeros(8), torch.zeros(1, 16, dtype=torch.uint8), 2, 1.0, torch.tensor([float("nan")])
            ),
            r"weights holds a non-finite value \(nan at 0\)",
        ),
        (
            lambda: ops.topk_decode_add_(
                torch.zeros(8), torch.zeros(1, 16, dtype=torch.uint8), 2, 1.0, torch.ones(1, dtype=torch.float64)
            ),
            r"weights has dtype Double; expected float32",
        ),
        (
            lambda: ops.topk_decode_add_(
                torch.zeros(8), torch.zeros(1, 16, dtype=torch.uint8), 2, 1.0, torch.ones(1, 1)
            ),
            r"weights must be a contiguous 1-D tensor; got shape \[1, 1\]",
        ),
        (
            lambda: ops.topk_decode_add_(torch.zeros(8), torch.zeros(1, 16, dtype=torch.uint8), 2, float("inf")),
            r"topk_decode_add_: scale \(inf\) must be finite",
        ),
        (lambda: ops.dense_encode_(torch.randn(8), torch.zeros(8), 0.0), r"dense_encode_: clip \(0\) must be positive"),
        (
            lambda: ops.dense_encode_(torch.randn(8), torch.zeros(8), float("inf")),
            r"dense_encode_: clip \(inf\) must be positive",
        ),
        (
            lambda: ops.lazy_trigger(torch.randn(8), torch.zeros(8), torch.zeros(8), -1.0),
            r"lazy_trigger: zeta \(-1\) must be non-negative",
        ),
        (
            lambda: ops.lazy_trigger(torch.randn(8), torch.zeros(8), torch.zeros(9), 1.0),
            r"lazy_trigger: y has shape \[9\]",
        ),
        (
            lambda: ops.dense_decode_add_(torch.zeros(8), torch.zeros(2, 16, dtype=torch.uint8)),
            r"gathered rows have 16 bytes but a dense message of 8 Float values has 32 bytes",
        ),
    ],
)
def test_bad_arguments_raise_errors_naming_them(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_decode_leaves_entries_no_message_carries_untouched():
    h = torch.tensor([-0.0, float("nan"), 1.0, -0.0, 2.0, float("inf"), 3.0, 4.0])
    message = ops.topk_encode_(torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, -6.0]), None, 2)
    out = h.clone()
    ops.topk_decode_add_(out, torch.stack([message, message]), 2)
    assert out.view(torch.int32)[[0, 1, 2, 3, 5, 6]].tolist() == h.view(torch.int32)[[0, 1, 2, 3, 5, 6]].tolist()
    assert out[[4, 7]].tolist() == [7.0, -2.0]


def test_decode_rejects_indices_out_of_order():
    message = ops.topk_encode_(torch.tensor([0.0, 3.0, 0.0, 4.0]), None, 2)
    message[8:16].view(torch.int32).copy_(torch.tensor([3, 1], dtype=torch.int32))
    with pytest.raises(
        RuntimeError, match=r"message of rank 0 holds indices out of ascending order \(3 then 1 at position 1\)"
    ):
        ops.topk_decode_add_(torch.zeros(4), message.unsqueeze(0), 2)


def test_decode_rejects_corrupt_index():
    message = ops.topk_encode_(torch.arange(8.0), None, 1)
    message[4:8].view(torch.int32).fill_(99)
    with pytest.raises(RuntimeError, match=r"holds index 99 outside \[0, 8\)"):
        ops.topk_decode_add_(torch.zeros(8), message.unsqueeze(0), 1)


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


@pytest.mark.parametrize(
    "call,pattern",
    [
        (
            lambda t: ops.motef_track_(t, t.clone(), t.clone(), t, torch.zeros(3), 0.9, 0.1),
            r"motef_track_: G_mean has shape \[3\] but g has shape \[8\]",
        ),
        (
            lambda t: ops.motef_track_(t, t.clone(), t.clone(), t, t, 0.0, 0.1),
            r"motef_track_: lam \(0\) must be in \(0, 1\]",
        ),
        (
            lambda t: ops.motef_track_(t, t.clone(), t.clone(), t, t, 0.5, 1.5),
            r"motef_track_: gamma \(1.5\) must be in \(0, 1\]",
        ),
        (
            lambda t: ops.motef_track_(t, t.clone().double(), t.clone(), t, t, 0.5, 0.5),
            r"motef_track_: M has dtype Double",
        ),
    ],
)
def test_motef_track_bad_arguments(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call(torch.randn(8))
