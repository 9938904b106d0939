"""Error-feedback methods: the per-coordinate state each keeps, and the ops it runs.

The DDP hook and the simulator both drive a method through the same three calls, so a
simulator run exercises exactly the code that trains:

    state = method.init_state(g, g_mean, worker)      # once per bucket; g_mean comes from a
                                                      # dense exchange when method.dense_init
    message = method.encode(g, state, codec, worker)  # this worker's fixed-size message
    out = method.decode(state, gathered, codec, g, worker)  # after the all-gather: the
                                                      # direction the optimizer steps along

``codec`` is the compressor bound to the bucket and step (compressors.Codec: its size, and
the context that keys its random streams). Notation as in ALGORITHMS.md: g = g_i is this
worker's gradient, n the number of workers, C the compressor. Every compressor family's
encode op also updates the state (``X_encode_(target, h_local)``: c = C(target - h_local),
h_local += c, in one op); the other updates add this rank's own message with the decode op.
Every state tensor has the bucket's size and dtype.
"""
import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor

from . import ops
from .compressors import Codec, Compressor


@dataclass(frozen=True)
class Worker:
    """Who runs a method step: rank i of n."""

    rank: int
    world: int


class Method:
    name: ClassVar[str]
    dense_init: ClassVar[bool]  # the first step of a bucket is a dense all-reduce
    needs_unbiased: ClassVar[bool] = False  # converges only with an unbiased compressor

    def check_compressor(self, compressor, allow_biased: bool = False) -> None:
        """Unbiased compressors for ``none``; contractive ones for the error-feedback methods."""
        if not isinstance(compressor, Compressor):
            raise TypeError(f"efcomm: compressor ({compressor!r}) must be an efcomm compressor (efcomm.TopK, ...)")
        if allow_biased:
            return
        if self.needs_unbiased and not compressor.unbiased:
            raise ValueError(
                f"efcomm: method {self.name!r} needs an unbiased compressor and {compressor!r} is biased "
                "(it may diverge; pass allow_biased=True to run it anyway, e.g. to show that)"
            )
        if not self.needs_unbiased and not compressor.contractive:
            raise ValueError(
                f"efcomm: method {self.name!r} needs a contractive compressor and {compressor!r} is not "
                f"(omega >= 1 for some bucket sizes); use {compressor!r}.scaled(), which divides by omega + 1"
            )

    sends_dense: ClassVar[bool] = False  # messages hold every coordinate (no compressor)
    per_worker_iterates: ClassVar[bool] = False  # each worker keeps its own model (MoTEF)
    lazy: ClassVar[bool] = False  # a worker may send nothing (see LazyMethod)

    def k_for(self, compressor, numel: int) -> int:
        """Entries per message for a bucket of ``numel`` elements (all of them for quantizers);
        recorded in the bucket state."""
        return compressor.k_for(numel) if hasattr(compressor, "k_for") else numel

    def check_world(self, world: int) -> None:
        """Raises if the method's parameters do not fit a group of ``world`` workers."""

    def init_state(self, g: Tensor, g_mean: Optional[Tensor], worker: Worker) -> dict:
        raise NotImplementedError

    def wire_nbytes(self, codec: Codec) -> int:
        """Bytes of one message (the largest, for the lazy methods)."""
        return codec.nbytes

    def nonfinite_in(self, gathered: Tensor, codec: Codec) -> Optional[Tensor]:
        """Whether the gathered messages carry inf/NaN (see Compressor.nonfinite_in), or None."""
        if self.sends_dense:
            es = torch.empty((), dtype=codec.dtype).element_size()
            return ~torch.isfinite(gathered[:, : codec.numel * es].view(codec.dtype)).all()
        return codec.compressor.nonfinite_in(gathered, codec.numel, codec.dtype)

    def encode(self, g: Tensor, state: dict, codec: Codec, worker: Worker) -> Tensor:
        raise NotImplementedError

    def decode(self, state: dict, gathered: Tensor, codec: Codec, g: Tensor, worker: Worker) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DCSGD(Method):
    """``none``: compressed SGD without error feedback. c_i = C(g_i); out = (1/n) sum_j c_j.

    Converges with unbiased compressors (Khirirat et al. 2018; Horvath & Richtarik 2020);
    with Top-k it can diverge (Beznosikov et al. 2020, arXiv 2002.12410, Example 1).
    """

    name = "none"
    dense_init = False
    needs_unbiased = True

    def init_state(self, g, g_mean, worker):
        return {}

    def encode(self, g, state, codec, worker):
        return codec.encode(g)

    def decode(self, state, gathered, codec, g, worker):
        out = torch.zeros_like(g)
        codec.decode_add_(out, gathered)
        return out


class EF(DCSGD):
    """``ef``: classic error feedback (Seide et al. 2014; Stich, Cordonnier, Jaggi 2018;
    Karimireddy et al. 2019). p = g_i + e_i; c_i = C(p); e_i = p - c_i; out = (1/n) sum_j c_j.

    The error e_i is kept in gradient units (the optimizer's step size is applied after the
    hook), so a changing learning rate does not rescale it.
    """

    name = "ef"
    needs_unbiased = False

    def init_state(self, g, g_mean, worker):
        return {"e": torch.zeros_like(g)}

    def encode(self, g, state, codec, worker):
        e = state["e"]
        e.add_(g)  # p = g + e
        if codec.is_topk:
            message = ops.topk_encode_(e, None, codec.k, threshold=codec.threshold)
            ops.topk_decode_add_(e, message[None], codec.k, scale=-1.0)  # e = p - C(p)
            return message
        message = codec.encode(e)
        codec.add_own_(e, message, -1.0)  # e = p - C(p)
        return message


def ef21_encode_(target: Tensor, h_local: Tensor, codec: Codec) -> Tensor:
    """c = C(target - h_local); h_local += c; returns the message of c (one op for Top-k,
    Rand-k and the quantizers)."""
    if codec.is_topk:
        return ops.topk_encode_(target, h_local, codec.k, threshold=codec.threshold)
    fused = getattr(codec.compressor, "ef21_encode_", None)
    if fused is not None:
        return fused(target, h_local, codec.ctx)
    message = codec.encode(target - h_local)
    codec.add_own_(h_local, message)
    return message


class EF21(Method):
    """``ef21``: Richtarik, Sokolov, Fatkhullin 2021, "EF21: A New, Simpler, Theoretically
    Better, and Practically Faster Error Feedback" (arXiv 2106.05203), Algorithm 1.

    Init (dense exchange): h_i = g_i, h = mean_j g_j. Step: c_i = C(g_i - h_i); h_i += c_i;
    h += (1/n) sum_j c_j; out = h.
    """

    name = "ef21"
    dense_init = True

    def init_state(self, g, g_mean, worker):
        return {"h_local": g.detach().clone(), "h": g_mean}

    def encode(self, g, state, codec, worker):
        return ef21_encode_(g, state["h_local"], codec)

    def decode(self, state, gathered, codec, g, worker):
        codec.decode_add_(state["h"], gathered)
        return state["h"]


class EF21SGDM(EF21):
    """``ef21-sgdm``: Fatkhullin, Tyurin, Richtarik 2023, "Momentum Provably Improves Error
    Feedback!" (arXiv 2305.15155). Worker: v_i = (1 - eta) v_i + eta g_i;
    c_i = C(v_i - h_i); h_i += c_i. Aggregate and output as EF21: h += (1/n) sum_j c_j; out = h.

    Init (dense exchange): v_i = h_i = g_i, h = mean_j g_j. eta in (0, 1] (the paper's
    experiments use 0.1); eta = 1 is EF21.
    """

    name = "ef21-sgdm"

    def __init__(self, eta: float = 0.1) -> None:
        if not (isinstance(eta, (int, float)) and 0.0 < eta <= 1.0):
            raise ValueError(f"efcomm: ef21-sgdm eta ({eta!r}) must be in (0, 1]")
        self.eta = float(eta)

    def init_state(self, g, g_mean, worker):
        return {"v": g.detach().clone(), "h_local": g.detach().clone(), "h": g_mean}

    def encode(self, g, state, codec, worker):
        state["v"].lerp_(g, self.eta)
        return ef21_encode_(state["v"], state["h_local"], codec)

    def __repr__(self) -> str:
        return f"EF21SGDM(eta={self.eta})"


class EControl(EF21):
    """``econtrol``: Gao, Islamov, Stich 2023, "EControl: Fast Distributed Optimization with
    Compression and Error Control" (arXiv 2311.05645). Worker: delta_i = C(eta e_i + g_i - h_i);
    e_i += g_i - h_i - delta_i; h_i += delta_i. Aggregate: h += (1/n) sum_j delta_j; out = h.

    Init (dense exchange, as EF21): e_i = 0, h_i = g_i, h = mean_j g_j. eta = 0 is EF21.
    The paper's analysis takes eta proportional to the compressor's contraction parameter
    alpha; the default (``eta=None``) uses the compressor's alpha for each bucket (k/d for Top-k). A fixed eta far above
    alpha diverges: eta = 0.1 with Top-1 of 100 coordinates did in our simulations.
    """

    name = "econtrol"

    def __init__(self, eta: Optional[float] = None) -> None:
        if eta is not None and not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ValueError(f"efcomm: econtrol eta ({eta!r}) must be None or in [0, 1]")
        self.eta = None if eta is None else float(eta)

    def init_state(self, g, g_mean, worker):
        return {"e": torch.zeros_like(g), "h_local": g.detach().clone(), "h": g_mean}

    def encode(self, g, state, codec, worker):
        eta = self.eta if self.eta is not None else codec.compressor.alpha(g.numel())
        e, h_local = state["e"], state["h_local"]
        r = g - h_local
        p = r + eta * e
        e.add_(r)
        message = codec.encode(p)
        codec.add_own_(e, message, -1.0)  # e += r - delta
        codec.add_own_(h_local, message)  # h_local += delta
        return message

    def __repr__(self) -> str:
        return f"EControl(eta={self.eta})"


class EF21W(EF21):
    """``ef21-w``: weighted EF21 (Richtarik, Gasanov, Burlachenko 2024, "Error Feedback
    Reloaded: From Quadratic to Arithmetic Mean of Smoothness Constants", arXiv 2402.10774).

    Weights w_i > 0 summing to 1, one per rank, the same on every rank: given, or
    w_i = L_i / sum_j L_j from the workers' smoothness constants (``EF21W.from_smoothness``;
    the simulator knows them for its problems; a DDP run estimates them with
    ``efcomm.estimate_smoothness``: each rank's local Hessian norm, all-gathered). Worker:
    c_i = C(g_i / (n w_i) - h_i); h_i += c_i. Aggregate: h += sum_j w_j c_j; out = h, so that
    h = sum_j w_j h_j tracks (1/n) sum_j g_j. Its theory step size uses the arithmetic mean
    of the L_i (efcomm.sim.ef21_stepsize). With uniform weights it is EF21.
    """

    name = "ef21-w"

    def __init__(self, weights: Sequence[float]) -> None:
        weights = [float(w) for w in weights]
        if not weights or any(not (w > 0.0 and math.isfinite(w)) for w in weights):
            raise ValueError(f"efcomm: ef21-w weights ({weights!r}) must be positive and finite")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"efcomm: ef21-w weights ({weights!r}) must sum to 1 (they sum to {sum(weights)})")
        self.weights = weights

    @classmethod
    def from_smoothness(cls, L_i: Sequence[float]) -> "EF21W":
        total = float(sum(L_i))
        return cls([float(L) / total for L in L_i])

    def check_world(self, world):
        if len(self.weights) != world:
            raise ValueError(f"efcomm: ef21-w has {len(self.weights)} weights for a group of {world} workers")

    def _scaled(self, g, worker):
        return g.mul(1.0 / (worker.world * self.weights[worker.rank]))

    def init_state(self, g, g_mean, worker):
        return {"h_local": self._scaled(g, worker), "h": g_mean}

    def encode(self, g, state, codec, worker):
        return ef21_encode_(self._scaled(g, worker), state["h_local"], codec)

    def decode(self, state, gathered, codec, g, worker):
        codec.decode_add_(state["h"], gathered, self.weights)
        return state["h"]

    def __repr__(self) -> str:
        return f"EF21W(weights={self.weights})"


def _dense_nbytes(numel: int, dtype: torch.dtype) -> int:
    return ops.message_nbytes("dense", numel, dtype)


class Clip21(Method):
    """``clip21``: EF21 with the clipping operator as its compressor (Khirirat, Gorbunov,
    Horvath, Islamov, Karray, Richtarik 2023, "Clip21: Error Feedback for Gradient Clipping",
    arXiv 2305.18929): c_i = clip_tau(g_i - h_i) = min(1, tau / ||g_i - h_i||) (g_i - h_i);
    h_i += c_i; h += (1/n) sum_j c_j; out = h. Each worker's message is bounded by tau in
    norm (its use is bounded per-worker sensitivity), and dense: no compression gain, and
    the compressor argument is not used. The state starts at h_i = h = 0, so that no
    unclipped gradient is ever sent. The clip factor is computed per bucket.
    """

    name = "clip21"
    dense_init = False
    sends_dense = True

    def __init__(self, tau: float = 1.0) -> None:
        if not (isinstance(tau, (int, float)) and 0.0 < tau < math.inf):
            raise ValueError(f"efcomm: clip21 tau ({tau!r}) must be positive and finite")
        self.tau = float(tau)

    def check_compressor(self, compressor, allow_biased: bool = False) -> None:
        """Clip21's compressor is its clipping operator: any ``compressor`` is ignored."""

    def k_for(self, compressor, numel):
        return numel

    def wire_nbytes(self, codec):
        return _dense_nbytes(codec.numel, codec.dtype)

    def init_state(self, g, g_mean, worker):
        return {"h_local": torch.zeros_like(g), "h": torch.zeros_like(g)}

    def encode(self, g, state, codec, worker):
        return ops.dense_encode_(g, state["h_local"], clip=self.tau)

    def decode(self, state, gathered, codec, g, worker):
        ops.dense_decode_add_(state["h"], gathered)
        return state["h"]

    def __repr__(self) -> str:
        return f"Clip21(tau={self.tau})"


class LazyMethod(EF21):
    """3PC lazy aggregation (Richtarik, Sokolov, Fatkhullin, Gasanov, Li, Gorbunov 2022,
    "3PC: Three Point Compressors for Communication-Efficient Distributed Training and a
    Better Theory for Lazy Aggregation", arXiv 2202.00998). State: h_i, the previous local
    gradient y_i, and h = mean_j h_j. Worker i sends only when
    ||g_i - h_i||^2 > zeta ||g_i - y_i||^2 (``lazy_trigger``); then y_i = g_i.
    Aggregate: h += (1/n) sum over the senders of their messages; out = h.

    The exchange keeps one shape on every rank: first an all-gather of one flag per rank,
    then one broadcast per sender. ``bytes_sent`` counts the flag and, on a sending rank,
    its message, so the savings are what actually crossed the wire. Reading the flags
    needs a host sync per bucket and step. Init (dense exchange): h_i = y_i = g_i.
    """

    dense_init = True
    lazy = True

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
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(zeta={self.zeta})"


class LAG(LazyMethod):
    """``lag``: a triggered worker sends g_i - h_i densely and sets h_i = g_i (3PC's LAG)."""

    name = "lag"
    sends_dense = True

    def check_compressor(self, compressor, allow_biased: bool = False) -> None:
        """LAG sends dense differences: any ``compressor`` is ignored."""

    def k_for(self, compressor, numel):
        return numel

    def wire_nbytes(self, codec):
        return _dense_nbytes(codec.numel, codec.dtype)

    def encode(self, g, state, codec, worker):
        return ops.dense_encode_(g, state["h_local"])

    def message_nbytes(self, choice, codec):
        return self.wire_nbytes(codec)

    def decode_senders(self, state, rows, choices, codec, worker):
        weights = torch.full((len(rows),), 1.0 / worker.world, dtype=torch.float32, device=state["h"].device)
        ops.dense_decode_add_(state["h"], torch.stack(rows), weights=weights)
        return state["h"]


class CLAG(LazyMethod):
    """``clag``: a triggered worker sends c_i = C(g_i - h_i) and h_i += c_i, as EF21
    (3PC's CLAG; zeta = 0 makes it EF21 whenever g_i != h_i)."""

    name = "clag"

    def decode_senders(self, state, rows, choices, codec, worker):
        codec.decode_add_(state["h"], torch.stack(rows), [1.0 / worker.world] * len(rows))
        return state["h"]


class AdaCGD(LazyMethod):
    """``adacgd``: adaptive compression (Makarenko, Gasanov, Islamov, Sadiev, Richtarik 2022,
    "Adaptive Compression for Communication-Efficient Distributed Training", arXiv
    2211.00188) over a ladder of Top-k rungs k_1 < ... < k_m (``ratios`` of the bucket).
    Worker i, with d = g_i - h_i: silent when ||d||^2 <= zeta ||g_i - y_i||^2; else the
    cheapest rung j with ||d - TopK_{k_j}(d)||^2 <= zeta ||g_i - y_i||^2, or the finest;
    it sends c = TopK_{k_j}(d) and h_i += c (``adacgd_choose``, then the EF21 encoder).
    The flag all-gather carries the chosen rung, so every rank knows each message's size.
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

    def ladder(self, numel: int) -> list:
        return sorted({max(1, min(numel, math.ceil(r * numel))) for r in self.ratios})

    def k_for(self, compressor, numel):
        return self.ladder(numel)[-1]

    def wire_nbytes(self, codec):
        return ops.message_nbytes("topk", codec.numel, codec.dtype, k=self.ladder(codec.numel)[-1])

    def choose(self, g, state, codec):
        return ops.adacgd_choose(g, state["h_local"], state["y"], self.ladder(g.numel()), self.zeta)

    def encode_choice(self, g, state, choice, codec, worker):
        return ops.topk_encode_(g, state["h_local"], self.ladder(g.numel())[choice - 1])

    def message_nbytes(self, choice, codec):
        return ops.message_nbytes("topk", codec.numel, codec.dtype, k=self.ladder(codec.numel)[choice - 1])

    def decode_senders(self, state, rows, choices, codec, worker):
        ladder = self.ladder(state["h"].numel())
        weight = torch.full((1,), 1.0 / worker.world, dtype=torch.float32, device=state["h"].device)
        for row, choice in zip(rows, choices):  # rank order, one message at a time
            ops.topk_decode_add_(state["h"], row.unsqueeze(0), ladder[choice - 1], weights=weight)
        return state["h"]

    def __repr__(self) -> str:
        return f"AdaCGD(ratios={self.ratios}, zeta={self.zeta})"


class MoTEF(Method):
    """``motef``: momentum tracking with error feedback (Islamov, Gao, Stich 2024, "Towards
    Faster Decentralized Stochastic Optimization with Communication Compression", arXiv
    2405.20114), in its complete-graph form (mixing matrix W = 11^T / n, so that
    sum_j W_ij H_j - H_i = mean_j H_j - H_i). Worker i, as in the authors' code
    (github.com/mlolab/MoTEF, ``MoTEF.py``):

        x_i += gamma (mean H - H_i) - eta V_i
        H_i += C(x_i - H_i)                   (an EF21 tracker of x_i; mean H by all-gather)
        M_i = (1 - lam) M_i + lam grad f_i(x_i)
        V_i += gamma (mean G - G_i) + M_i - M_i(previous)
        G_i += C(V_i - G_i)                   (an EF21 tracker of V_i)

    from H = G = 0 and M_i = V_i = grad f_i(x_0); eta is the step size. (The authors' code
    starts M at 0; then mean V - mean M stays mean grad f_i(x_0) forever, and the iterates
    never settle: in our simulations the gradient came back to its starting norm. Starting
    M with V keeps mean V = mean M, the tracking invariant.)

    Two forms, one class:

    * ``per_worker=True`` is the paper's algorithm above: every worker keeps its own
      iterate x_i, which the consensus term pulls together. DDP keeps one identical model
      on every rank, so this form runs in ``efcomm.sim`` only (``efcomm.register`` rejects
      it); it sends two messages per step (the x and V trackers).
    * ``per_worker=False`` (the default, and the form the DDP hook runs) keeps one shared
      iterate, the workers' average. Averaging the x step over the complete graph cancels
      the consensus term (mean_i (mean H - H_i) = 0), so the average moves by
      x <- x - eta mean_i V_i; the shared iterate has no x tracker to send, and steps along
      the only estimate of mean_i V_i that the compressed messages give every rank alike,
      mean_j G_j. One message per step; gradients are taken at the shared iterate. Worker
      i, with g_i its gradient:

          M_i, V_i as above;  c_i = C(V_i - G_i);  G_i += c_i;  G += (1/n) sum_j c_j;  out = G

      from a dense exchange, as EF21: M_i = V_i = G_i = g_i, G = mean_j g_j. With the
      identity compressor G = mean_i M_i: SGD with momentum (lam = 1 - beta), which is
      what the paper's average iterate does without compression.
    """

    name = "motef"
    dense_init = True

    def __init__(self, gamma: float = 0.1, lam: float = 0.9, per_worker: bool = False) -> None:
        if not (isinstance(gamma, (int, float)) and 0.0 < gamma <= 1.0):
            raise ValueError(f"efcomm: motef gamma ({gamma!r}) must be in (0, 1]")
        if not (isinstance(lam, (int, float)) and 0.0 < lam <= 1.0):
            raise ValueError(f"efcomm: motef lam ({lam!r}) must be in (0, 1]")
        if not isinstance(per_worker, bool):
            raise ValueError(f"efcomm: motef per_worker ({per_worker!r}) must be a bool")
        self.gamma, self.lam = float(gamma), float(lam)
        self.per_worker_iterates = per_worker  # shadows the class default for this instance

    def init_state(self, g, g_mean, worker):
        if self.per_worker_iterates:
            z = torch.zeros_like(g)
            return {"H": z.clone(), "H_mean": z.clone(), "G": z.clone(), "G_mean": z.clone(), "M": g.clone(), "V": g.clone()}
        g = g.detach()
        return {"M": g.clone(), "V": g.clone(), "G": g.clone(), "G_mean": g_mean}

    def move(self, x: Tensor, state: dict, eta: float) -> Tensor:
        """The per-worker form's step of x_i: x_i + gamma (mean H - H_i) - eta V_i."""
        return x + self.gamma * (state["H_mean"] - state["H"]) - eta * state["V"]

    def track_momentum(self, g: Tensor, state: dict) -> None:
        """M_i and the tracking direction V_i before its compression, in one fused op:
        M_i - M_i(previous) = lam (g_i - M_i(previous))."""
        ops.motef_track_(g, state["M"], state["V"], state["G"], state["G_mean"], self.lam, self.gamma)

    def encode(self, g, state, codec, worker):
        self.track_momentum(g, state)
        return ef21_encode_(state["V"], state["G"], codec)

    def decode(self, state, gathered, codec, g, worker):
        codec.decode_add_(state["G_mean"], gathered)
        return state["G_mean"]

    def __repr__(self) -> str:
        return f"MoTEF(gamma={self.gamma}, lam={self.lam}, per_worker={self.per_worker_iterates})"


METHODS: dict = {
    cls.name: cls for cls in (DCSGD, EF, EF21, EF21SGDM, EControl, EF21W, Clip21, LAG, CLAG, AdaCGD, MoTEF)
}


def make_method(method) -> Method:
    """A Method from a name (default parameters) or a Method instance (returned as is)."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"efcomm: method ({method!r}) must be one of {sorted(METHODS)} or a Method")
    if method == "ef21-w":
        raise ValueError("efcomm: method 'ef21-w' needs weights: pass efcomm.methods.EF21W(weights=[...])")
    return METHODS[method]()
