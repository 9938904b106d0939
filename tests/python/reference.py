"""Brute-force references for the op tests: full sorts, float32 tensor arithmetic one rounding at a
time, and Python loops, obviously right."""

import torch

F32 = torch.float32


def f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F32)


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending int64 indices of the k entries of largest |x|: NaN first, ties to the lower index."""
    flat = x.reshape(-1).float()
    if flat.numel() > 5000:  # the same order, vectorised: a stable sort on (isnan, |x|) descending
        mag = flat.abs().nan_to_num(nan=float("inf"))
        order = torch.sort(mag, stable=True, descending=True).indices
        nan_first = torch.sort(torch.isnan(flat[order]).to(torch.int8), stable=True, descending=True).indices
        return torch.sort(order[nan_first][:k]).values
    keys = sorted((0 if v != v else 1, 0.0 if v != v else -abs(v), i) for i, v in enumerate(flat.tolist()))
    return torch.tensor(sorted(i for _, _, i in keys[:k]), dtype=torch.int64)


def add_own(state: torch.Tensor, values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """state + what the decode rule adds for one message of these values: the sum starts at +0
    (so -0 adds +0), then float32(c * 1) and float32(c * scale), then one rounding to the dtype."""
    c = (torch.zeros_like(values, dtype=F32) + values.float()) * f32(1.0) * f32(scale)
    return (state.float() + c).to(state.dtype)


def ef21_encode(g: torch.Tensor, h_local: torch.Tensor, k: int, scale: float = 1.0):
    """(d, selected indices, new h_local) of topk_encode_(g, h_local, k, scale): EF21's step."""
    d = (g.float() - h_local.float()).to(g.dtype)
    idx = topk_indices(d, k)
    new_h = h_local.clone()
    new_h[idx] = add_own(h_local[idx], d[idx], scale)
    return d, idx, new_h


def ef_encode(g: torch.Tensor, e: torch.Tensor, k: int):
    """(p, selected indices, new e) of one classic EF Top-k step: p = g + e, e = p - TopK(p)."""
    p = (g.float() + e.float()).to(g.dtype)
    idx = topk_indices(p, k)
    new_e = p.clone()
    new_e[idx] = add_own(p[idx], p[idx], -1.0)
    return p, idx, new_e


def ef21_sgdm_encode(g, v, h_local, k, eta):
    """(d, selected indices, new v, new h_local) of one EF21-SGDM step (v = lerp(v, g, eta))."""
    new_v = torch.lerp(v, g, eta)
    d, idx, new_h = ef21_encode(new_v, h_local, k)
    return d, idx, new_v, new_h


def econtrol_encode(g, e, h_local, k, eta):
    """(p, selected indices, new e, new h_local) of one EControl step: r = T(g - h),
    p = T(r + T(eta e)), e = T(e + r); then e -= p and h += p where sent."""
    r = (g.float() - h_local.float()).to(g.dtype)
    feedback = (f32(eta) * e.float()).to(g.dtype)
    p = (r.float() + feedback.float()).to(g.dtype)
    idx = topk_indices(p, k)
    new_e = (e.float() + r.float()).to(g.dtype)
    new_e[idx] = add_own(new_e[idx], p[idx], -1.0)
    new_h = h_local.clone()
    new_h[idx] = add_own(h_local[idx], p[idx])
    return p, idx, new_e, new_h


def decode_add(h: torch.Tensor, messages: list, weights=None, scale: float = 1.0) -> torch.Tensor:
    """The decode rule over (values, indices) messages, per entry in Python: acc = 0; for each
    row in rank order acc = f32(acc + (f32(w_j v_j) or v_j)); c = acc (weights) or
    f32(acc * f32(1/n)); c = f32(c * f32(scale)); h = T(h + c) on the entries some message
    carries; the others unchanged."""
    acc = {}
    for j, (values, indices) in enumerate(messages):
        for v, i in zip(values.float().tolist(), indices.tolist()):
            term = f32(v) if weights is None else f32(weights[j]) * f32(v)
            acc[i] = acc.get(i, f32(0.0)) + term
    out = h.clone()
    for i, a in acc.items():
        c = a if weights is not None else a * f32(1.0 / len(messages))
        out[i] = (h[i].float() + c * f32(scale)).to(h.dtype)
    return out


def unpack(message: torch.Tensor, k: int, dtype: torch.dtype):
    """(values, int32 indices) of a Top-k message: values first, indices at a 4-byte boundary."""
    value_bytes = k * torch.empty((), dtype=dtype).element_size()
    offset = (value_bytes + 3) // 4 * 4
    assert message.numel() == offset + 4 * k
    return message[:value_bytes].view(dtype), message[offset : offset + 4 * k].view(torch.int32)


def clip21_encode(g, h_local, tau):
    """(c, new h_local) of dense_encode_(g, h_local, clip=tau): the norm in double, in index order."""
    d = (g.float() - h_local.float()).to(g.dtype)
    norm = d.double().pow(2).cumsum(0)[-1].sqrt().item()  # the sum in index order
    c = d if norm <= tau else (d.float() * f32(tau / norm)).to(g.dtype)
    return c, add_own(h_local, c)


def dense_decode_add(h, rows, weights=None, scale: float = 1.0):
    """The decode rule for dense messages, one float32 tensor operation at a time."""
    acc = torch.zeros(h.numel(), dtype=F32)
    for j, values in enumerate(rows):
        acc = acc + (values.float() if weights is None else f32(weights[j]) * values.float())
    c = acc if weights is not None else acc * f32(1.0 / len(rows))
    return (h.float() + c * f32(scale)).to(h.dtype)


def lazy_trigger(g, h_local, y, zeta):
    """||g - h||^2 > zeta ||g - y||^2 with float32 differences and double sums in index order."""
    a = (g.float() - h_local.float()).double()
    b = (g.float() - y.float()).double()
    return bool(a.pow(2).cumsum(0)[-1] > zeta * b.pow(2).cumsum(0)[-1])


def adacgd_choose(g, h_local, y, ks, zeta):
    """AdaCGD's rung by a full sort: 0 silent, else the first rung within the bound, else the last."""
    d2 = sorted(((g.float() - h_local.float()).double() ** 2).tolist(), reverse=True)
    bound = zeta * float(((g.float() - y.float()).double() ** 2).sum())
    total = sum(d2)
    if total <= bound:
        return 0
    for j, k in enumerate(ks):
        if total - sum(d2[:k]) <= bound:
            return j + 1
    return len(ks)
