"""Every method's step in plain torch, for n workers held in lists: the update rules of the
README's method table written out entry by entry, without efcomm's ops, codecs or engine.

Float32 throughout, one rounding per torch operation, in the order the method's docstring
and csrc/ops.h give; Top-k selection by reference.topk_indices (a full sort). The decode
rule (kernels/decode_rule.h) for the entries that some message carries: acc = 0; for each
row in rank order acc = acc + (w_j v_j or v_j); c = acc (weights) or acc * float32(1/rows);
h = h + c. A test runs a method through the engine and through :class:`ReferenceRun` on
the same gradients and compares outputs, every state tensor and the bytes each rank sent,
bit for bit."""

import math

import torch
from reference import adacgd_choose, lazy_trigger, topk_indices

F32 = torch.float32
BYTES = 4  # float32 values, int32 indices, int32 choices


def f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F32)


def topk(d: torch.Tensor, k: int):
    """(C(d) as a dense tensor, zero off the selection; the selection as a mask)."""
    mask = torch.zeros(d.numel(), dtype=torch.bool)
    mask[topk_indices(d, k)] = True
    return torch.where(mask, d, torch.zeros_like(d)), mask


def everything(d: torch.Tensor):
    return d, torch.ones(d.numel(), dtype=torch.bool)


def add_own(b: torch.Tensor, c: torch.Tensor, mask: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """b + sign * c on the entries the message carries (an encoder's own state update)."""
    return torch.where(mask, b + c * f32(sign), b)


def decode(h: torch.Tensor, rows: list, weights=None) -> torch.Tensor:
    """h plus the decode of ``rows`` [(C_j dense, its mask)], in rank order."""
    acc = torch.zeros_like(h)
    carried = torch.zeros(h.numel(), dtype=torch.bool)
    for j, (c, mask) in enumerate(rows):
        term = c if weights is None else f32(weights[j]) * c
        acc = torch.where(mask, acc + term, acc)
        carried |= mask
    c = acc if weights is not None else acc * f32(1.0 / len(rows))
    return torch.where(carried, h + c, h)


def dense_mean(grads: list) -> torch.Tensor:
    """The dense start: sum over ranks, in rank order, of g_i / n."""
    n = len(grads)
    total = grads[0] / n
    for g in grads[1:]:
        total = total + g / n
    return total


DENSE_START = {"ef21", "ef21-sgdm", "econtrol", "ef21-w", "lag", "clag", "adacgd", "motef"}
LAZY = {"lag", "clag", "adacgd"}


class ReferenceRun:
    """n workers of ``method`` (a name) on buckets of ``numel`` entries; ``k`` entries of Top-k
    (the compressor of ef21, ef21-sgdm, econtrol, ef21-w, clag, ef, none and motef), and the
    method's parameters: eta (ef21-sgdm; econtrol: None is k / numel), weights (ef21-w), tau
    (clip21), zeta (lag, clag, adacgd), ks (adacgd's rungs), gamma and lam (motef).

    ``step(grads)`` takes every rank's gradient and returns every rank's output;
    ``states[i]`` holds rank i's tensors under the engine's names, ``bytes_sent[i]`` what
    rank i sent, and ``events`` which branches the steps took (Clip21: per rank and step,
    whether it clipped; the lazy methods: per step, every rank's choice, 0 for silent)."""

    def __init__(self, method: str, n: int, numel: int, k: int, **params) -> None:
        self.method, self.n, self.numel, self.k, self.p = method, n, numel, k, params
        self.states = None
        self.bytes_sent = [0] * n
        self.events = []

    # ---- the step ------------------------------------------------------------------------

    def step(self, grads: list) -> list:
        grads = [g.to(F32).clone() for g in grads]
        if self.states is None and self.method in DENSE_START:
            return self._start(grads)
        if self.states is None:
            self.states = [self._zero_state() for _ in grads]
        if self.method in LAZY:
            return self._lazy_step(grads)
        rows = [self._encode(i, g) for i, g in enumerate(grads)]
        for i in range(self.n):
            self.bytes_sent[i] += self._message_bytes()
        return [self._decode(i, rows) for i in range(self.n)]

    def _start(self, grads: list) -> list:
        mean = dense_mean(grads)
        self.states = []
        for i, g in enumerate(grads):
            m = self.method
            if m == "motef":
                state = {"M": g.clone(), "V": g.clone(), "G": g.clone(), "G_mean": mean.clone()}
            elif m == "ef21-w":
                state = {"h_local": self._weighted(i, g), "h": mean.clone()}
            else:
                state = {"h_local": g.clone(), "h": mean.clone()}
                if m == "ef21-sgdm":
                    state["v"] = g.clone()
                if m == "econtrol":
                    state["e"] = torch.zeros_like(g)
                if m in LAZY:
                    state["y"] = g.clone()
            self.states.append(state)
            self.bytes_sent[i] += self.numel * BYTES
        return [mean.clone() for _ in grads]

    def _zero_state(self) -> dict:
        z = torch.zeros(self.numel, dtype=F32)
        if self.method == "clip21":
            return {"h_local": z.clone(), "h": z.clone()}
        if self.method == "ef":
            return {"e": z.clone()}
        return {}  # none

    def _weighted(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """EF21-W's g_i / (n w_i)."""
        return g * (1.0 / (self.n * self.p["weights"][i]))

    def _message_bytes(self) -> int:
        if self.method == "clip21":
            return self.numel * BYTES  # dense values
        return 2 * self.k * BYTES  # k values and k indices

    def _encode(self, i: int, g: torch.Tensor):
        """Rank i's message (C dense, mask); updates its state."""
        s, m, k = self.states[i], self.method, self.k
        if m in ("ef21", "ef21-w"):
            target = g if m == "ef21" else self._weighted(i, g)
            c, mask = topk(target - s["h_local"], k)
            s["h_local"] = add_own(s["h_local"], c, mask)
            return c, mask
        if m == "ef21-sgdm":
            s["v"] = torch.lerp(s["v"], g, self.p["eta"])
            c, mask = topk(s["v"] - s["h_local"], k)
            s["h_local"] = add_own(s["h_local"], c, mask)
            return c, mask
        if m == "econtrol":
            eta = self.p.get("eta")
            eta = k / self.numel if eta is None else eta  # efcomm's default: the compressor's alpha
            r = g - s["h_local"]
            p = r + s["e"] * eta
            s["e"] = s["e"] + r
            c, mask = topk(p, k)
            s["e"] = add_own(s["e"], c, mask, -1.0)  # e += r - delta
            s["h_local"] = add_own(s["h_local"], c, mask)  # h_i += delta
            return c, mask
        if m == "clip21":
            d = g - s["h_local"]
            norm = math.sqrt(d.double().pow(2).cumsum(0)[-1].item())  # in index order
            clipped = norm > self.p["tau"]
            self.events.append(clipped)
            c, mask = everything(d * f32(self.p["tau"] / norm) if clipped else d)
            s["h_local"] = add_own(s["h_local"], c, mask)
            return c, mask
        if m == "ef":
            p = s["e"] + g
            c, mask = topk(p, k)
            s["e"] = add_own(p, c, mask, -1.0)  # e = p - C(p)
            return c, mask
        if m == "none":
            return topk(g, k)
        if m == "motef":
            step = f32(self.p["lam"]) * (g - s["M"])
            gossip = f32(self.p["gamma"]) * (s["G_mean"] - s["G"])
            s["M"] = s["M"] + step
            s["V"] = (s["V"] + step) + gossip
            c, mask = topk(s["V"] - s["G"], k)
            s["G"] = add_own(s["G"], c, mask)
            return c, mask
        raise ValueError(f"method_reference: unknown method ({m!r})")

    def _decode(self, i: int, rows: list) -> torch.Tensor:
        s, m = self.states[i], self.method
        if m in ("ef", "none"):
            return decode(torch.zeros(self.numel, dtype=F32), rows)
        if m == "motef":
            s["G_mean"] = decode(s["G_mean"], rows)
            return s["G_mean"].clone()
        s["h"] = decode(s["h"], rows, self.p["weights"] if m == "ef21-w" else None)
        return s["h"].clone()

    def _lazy_step(self, grads: list) -> list:
        """LAG, CLAG, AdaCGD: rank i sends when ||g_i - h_i||^2 > zeta ||g_i - y_i||^2 (AdaCGD:
        the cheapest rung within the bound), then y_i = g_i; h += (1/n) sum over the senders."""
        m, zeta = self.method, self.p["zeta"]
        choices = []
        for s, g in zip(self.states, grads):
            if m == "adacgd":
                choices.append(adacgd_choose(g, s["h_local"], s["y"], self.p["ks"], zeta))
            else:
                choices.append(int(lazy_trigger(g, s["h_local"], s["y"], zeta)))
        self.events.append(tuple(choices))
        rows, weights = [], []
        for i, (s, g, choice) in enumerate(zip(self.states, grads, choices)):
            self.bytes_sent[i] += BYTES  # the choice
            if choice:
                d = g - s["h_local"]
                if m == "lag":
                    c, mask = everything(d)
                    self.bytes_sent[i] += self.numel * BYTES
                else:
                    k = self.k if m == "clag" else self.p["ks"][choice - 1]
                    c, mask = topk(d, k)
                    self.bytes_sent[i] += 2 * k * BYTES
                s["h_local"] = add_own(s["h_local"], c, mask)
                rows.append((c, mask))
                weights.append(1.0 / self.n)
            s["y"] = g.clone()
        outs = []
        for s in self.states:
            if rows and m == "adacgd":  # one message at a time
                for row, w in zip(rows, weights):
                    s["h"] = decode(s["h"], [row], [w])
            elif rows:
                s["h"] = decode(s["h"], rows, weights)
            outs.append(s["h"].clone())
        return outs
