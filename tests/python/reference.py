"""Brute-force references for the op tests: full sorts and Python loops, obviously right."""
import torch


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


def ef21_encode(g: torch.Tensor, h_local: torch.Tensor, k: int):
    """(d, selected indices, new h_local) of one EF21 Top-k step, rounding as the ops specify."""
    d = (g.float() - h_local.float()).to(g.dtype)
    idx = topk_indices(d, k)
    new_h = h_local.clone()
    new_h[idx] = (h_local[idx].float() + d[idx].float()).to(g.dtype)
    return d, idx, new_h


def ef_encode(g: torch.Tensor, e: torch.Tensor, k: int):
    """(p, selected indices, new e) of one classic EF Top-k step, rounding as the ops specify."""
    p = (g.float() + e.float()).to(g.dtype)
    idx = topk_indices(p, k)
    new_e = p.clone()
    new_e[idx] = (p[idx].float() - p[idx].float()).to(g.dtype)
    return p, idx, new_e


def ef21_sgdm_encode(g, v, h_local, k, eta):
    """(d, selected indices, new v, new h_local) of one EF21-SGDM step."""
    keep = torch.tensor(1.0 - eta, dtype=torch.float32)
    take = torch.tensor(eta, dtype=torch.float32)
    new_v = (keep * v.float() + take * g.float()).to(g.dtype)
    d, idx, new_h = ef21_encode(new_v, h_local, k)
    return d, idx, new_v, new_h


def econtrol_encode(g, e, h_local, k, eta):
    """(p, selected indices, new e, new h_local) of one EControl step."""
    r = (g.float() - h_local.float()).to(g.dtype)
    feedback = (torch.tensor(eta, dtype=torch.float32) * e.float()).to(g.dtype)
    p = (r.float() + feedback.float()).to(g.dtype)
    idx = topk_indices(p, k)
    new_e = (e.float() + r.float()).to(g.dtype)
    new_e[idx] = (new_e[idx].float() - p[idx].float()).to(g.dtype)
    new_h = h_local.clone()
    new_h[idx] = (h_local[idx].float() + p[idx].float()).to(g.dtype)
    return p, idx, new_e, new_h


def decode_add(h: torch.Tensor, messages: list, weights=None) -> torch.Tensor:
    """h + (1/n) sum_j c_j (float32 sum in rank order, then one scaled add), or with weights
    h + sum_j float32(w_j c_j), on the entries some message names; the others unchanged."""
    acc = torch.zeros(h.numel(), dtype=torch.float32)
    named = torch.zeros(h.numel(), dtype=torch.bool)
    for j, (values, indices) in enumerate(messages):
        w = torch.tensor(1.0 if weights is None else weights[j], dtype=torch.float32)
        for v, i in zip(values.float().tolist(), indices.tolist()):
            acc[i] = torch.tensor(acc[i].item(), dtype=torch.float32) + w * torch.tensor(v, dtype=torch.float32)
            named[i] = True
    scale = 1.0 if weights is not None else 1.0 / len(messages)
    update = acc * torch.tensor(scale, dtype=torch.float32)
    return torch.where(named, (h.float() + update).to(h.dtype), h)


def unpack(message: torch.Tensor, k: int, dtype: torch.dtype):
    """(values, int32 indices) of a Top-k message: values first, indices at a 4-byte boundary."""
    value_bytes = k * torch.empty((), dtype=dtype).element_size()
    offset = (value_bytes + 3) // 4 * 4
    assert message.numel() == offset + 4 * k
    return message[:value_bytes].view(dtype), message[offset : offset + 4 * k].view(torch.int32)


def clip21_encode(g, h_local, tau):
    """(c, new h_local) of one Clip21 step: the norm in double, in index order."""
    d = (g.float() - h_local.float()).to(g.dtype)
    norm = d.double().pow(2).sum().sqrt().item() if d.numel() < 5000 else None
    if norm is None:  # the same sum in index order, for large tensors: cumulative sum in double
        norm = d.double().pow(2).cumsum(0)[-1].sqrt().item()
    c = d if norm <= tau else (d.float() * torch.tensor(tau / norm, dtype=torch.float32)).to(g.dtype)
    return c, (h_local.float() + c.float()).to(g.dtype)


def dense_decode_add(h, rows):
    """h + (1/n) sum_j c_j for dense messages: float32 sum in rank order, one scaled add."""
    acc = torch.zeros(h.numel(), dtype=torch.float32)
    for values in rows:
        acc = acc + values.float()
    return (h.float() + acc * torch.tensor(1.0 / len(rows), dtype=torch.float32)).to(h.dtype)


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
