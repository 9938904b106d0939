"""Lazy aggregation (3PC): LAG, CLAG and AdaCGD, whose workers may stay silent."""

import math
from typing import Sequence

import torch
from torch import Tensor

from .. import ops
from ..compressors import Codec, Identity, TopK
from .base import register_method, rank_weights
from .ef21 import EF21


class LazyMethod(EF21):
    """3PC lazy aggregation (Richtarik, Sokolov, Fatkhullin, Gasanov, Li, Gorbunov 2022,
    "3PC: Three Point Compressors for Communication-Efficient Distributed Training and a
    Better Theory for Lazy Aggregation", arXiv 2202.00998). State: h_i, the previous local
    gradient y_i, and h = mean_j h_j. Worker i sends only when
    ||g_i - h_i||^2 > zeta ||g_i - y_i||^2 (``lazy_trigger``); then y_i = g_i.
    Aggregate: h += (1/n) sum over the senders of their messages; out = h.

    The exchange keeps one shape on every rank: first an all-gather of one choice per rank,
    then one broadcast per sender. ``bytes_sent`` counts the choice and, on a sending rank,
    its message, so the savings are what actually crossed the wire. Reading the choices
    needs a host sync per bucket and step (the collectives that follow depend on them). A
    rank whose gradient is non-finite finds its trigger false and stays silent. Init (dense
    exchange): h_i = y_i = g_i.
    """

    dense_init = True
    lazy = True
    reform = {"y": "h", "h_local": "h"}

    def __init__(self, zeta: float = 1.0) -> None:
        if not (isinstance(zeta, (int, float)) and 0.0 <= zeta < math.inf):
            raise ValueError(f"efcomm: {self.name} zeta ({zeta!r}) must be non-negative and finite")
        self.zeta = float(zeta)

    def init_state(self, g, g_mean, worker):
        return {"y": g.detach().clone(), "h_local": g.detach().clone(), "h": g_mean}

    def choose(self, g, state, codec) -> Tensor:
        """0 to stay silent, else which message to send (1 for LAG and CLAG): a 0-dim tensor."""
        return ops.lazy_trigger(g, state["h_local"], state["y"], self.zeta).to(torch.int32)

    def encode_choice(self, g, state, choice: int, codec: Codec, worker) -> Tensor:
        return self.encode(g, state, codec, worker)

    def remember(self, g, state) -> None:
        state["y"].copy_(g)

    def message_nbytes(self, choice: int, codec: Codec) -> int:
        return codec.nbytes

    def decode_senders(self, state, rows: list, choices: list, codec: Codec, worker) -> Tensor:
        """h += (1/n) sum of the senders' messages (rows in rank order); returns h."""
        codec.decode_add_(
            state["h"], torch.stack(rows), weights=rank_weights(len(rows), worker.world, state["h"].device)
        )
        return state["h"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(zeta={self.zeta})"


@register_method
class LAG(LazyMethod):
    """``lag``: a triggered worker sends g_i - h_i densely and sets h_i = g_i (3PC's LAG); the
    compressor argument is not used (it sends with efcomm.Identity())."""

    name = "lag"
    sends_dense = True

    def check_compressor(self, compressor, allow_biased: bool = False) -> None:
        """LAG sends dense differences: any ``compressor`` is ignored."""

    def wire_compressor(self, compressor):
        return Identity()


@register_method
class CLAG(LazyMethod):
    """``clag``: a triggered worker sends c_i = C(g_i - h_i) and h_i += c_i, as EF21
    (3PC's CLAG; zeta = 0 makes it EF21 whenever g_i != h_i)."""

    name = "clag"


@register_method
class AdaCGD(LazyMethod):
    """``adacgd``: adaptive compression (Makarenko, Gasanov, Islamov, Sadiev, Richtarik 2022,
    "Adaptive Compression for Communication-Efficient Distributed Training", arXiv
    2211.00188) over a ladder of Top-k rungs k_1 < ... < k_m (``ratios`` of the bucket).
    Worker i, with d = g_i - h_i: silent when ||d||^2 <= zeta ||g_i - y_i||^2; else the
    cheapest rung j with ||d - TopK_{k_j}(d)||^2 <= zeta ||g_i - y_i||^2, or the finest;
    it sends c = TopK_{k_j}(d) and h_i += c (``adacgd_choose``, then the rung's encode).
    The choice gather carries the chosen rung, so every rank knows each message's size.
    The compressor argument is not used. Aggregation as LazyMethod, one sender at a time.
    """

    name = "adacgd"

    def __init__(self, ratios: Sequence[float] = (0.01, 0.05, 0.2), zeta: float = 1.0) -> None:
        super().__init__(zeta)
        ratios = tuple(float(r) for r in ratios)
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios) or list(ratios) != sorted(set(ratios)):
            raise ValueError(f"efcomm: adacgd ratios ({ratios!r}) must be increasing values in (0, 1]")
        self.ratios = ratios

    def check_compressor(self, compressor, allow_biased: bool = False) -> None:
        """AdaCGD's compressors are its own ladder: any ``compressor`` is ignored."""

    def wire_compressor(self, compressor):
        return TopK(ratio=self.ratios[-1])  # the finest rung: the largest message

    def ladder(self, numel: int) -> list:
        return sorted({max(1, min(numel, math.ceil(r * numel))) for r in self.ratios})

    def _rung(self, choice: int, codec: Codec) -> Codec:
        return Codec(TopK(k=self.ladder(codec.numel)[choice - 1]), codec.numel, codec.dtype, codec.ctx)

    def choose(self, g, state, codec):
        return ops.adacgd_choose(g, state["h_local"], state["y"], self.ladder(g.numel()), self.zeta)

    def encode_choice(self, g, state, choice, codec, worker):
        return self._rung(choice, codec).encode_(g, state["h_local"])

    def message_nbytes(self, choice, codec):
        return self._rung(choice, codec).nbytes

    def decode_senders(self, state, rows, choices, codec, worker):
        weight = rank_weights(1, worker.world, state["h"].device)
        for row, choice in zip(rows, choices):  # rank order, one message at a time
            self._rung(choice, codec).decode_add_(state["h"], row.unsqueeze(0), weights=weight)
        return state["h"]

    def __repr__(self) -> str:
        return f"AdaCGD(ratios={self.ratios}, zeta={self.zeta})"
