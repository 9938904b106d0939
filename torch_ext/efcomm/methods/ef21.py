"""EF21 and the methods built on its step: EF21-SGDM, EControl, EF21-W, Clip21."""

import math
import warnings
from typing import Optional, Sequence

import torch

from ..compressors import Clip
from .base import Method, register_method


@register_method
class EF21(Method):
    """``ef21``: Richtarik, Sokolov, Fatkhullin 2021, "EF21: A New, Simpler, Theoretically
    Better, and Practically Faster Error Feedback" (arXiv 2106.05203), Algorithm 1.

    Init (dense exchange): h_i = g_i, h = mean_j g_j. Step: c_i = C(g_i - h_i); h_i += c_i;
    h += (1/n) sum_j c_j; out = h.

    ``dense_start=False`` starts at h_i = h = 0 instead (no dense exchange; the analysis allows
    any h_i^0, Theorem 1): until a coordinate is first sent, the output there is 0 rather than
    the first step's gradient, which an adaptive optimizer (Adam) would otherwise keep
    stepping along at full speed (benchmarks/convergence.py, docs/convergence.md).
    """

    name = "ef21"
    dense_init = True

    def __init__(self, dense_start: bool = True) -> None:
        if not isinstance(dense_start, bool):
            raise ValueError(f"efcomm: {self.name} dense_start ({dense_start!r}) must be a bool")
        self.dense_init = dense_start

    # h_i := h keeps h = mean_i h_i (and EF21-W's h = sum_i w_i h_i); EF21's analysis allows
    # any h_i at the start (arXiv 2106.05203, Theorem 1: the bound carries G^0 = mean_i
    # ||h_i^0 - grad f_i(x^0)||^2), so a resumed run is EF21 started afresh from that state.
    reform = {"h_local": "h"}

    def init_state(self, g, g_mean, worker):
        if g_mean is None:  # dense_start=False
            return {"h_local": torch.zeros_like(g), "h": torch.zeros_like(g)}
        return {"h_local": g.detach().clone(), "h": g_mean}

    def encode(self, g, state, codec, worker):
        return codec.encode_(g, state["h_local"])

    def decode(self, state, gathered, codec, g, worker):
        codec.decode_add_(state["h"], gathered)
        return state["h"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.dense_init else f"{type(self).__name__}(dense_start=False)"


@register_method
class EF21SGDM(EF21):
    """``ef21-sgdm``: Fatkhullin, Tyurin, Richtarik 2023, "Momentum Provably Improves Error
    Feedback!" (arXiv 2305.15155). Worker: v_i = (1 - eta) v_i + eta g_i (one ``lerp``);
    c_i = C(v_i - h_i); h_i += c_i. Aggregate and output as EF21: h += (1/n) sum_j c_j; out = h.

    Init (dense exchange): v_i = h_i = g_i, h = mean_j g_j. eta in (0, 1] (the paper's
    experiments use 0.1); eta = 1 is EF21.
    """

    name = "ef21-sgdm"
    reform = {"v": "h", "h_local": "h"}

    def __init__(self, eta: float = 0.1, dense_start: bool = True) -> None:
        if not (isinstance(eta, (int, float)) and 0.0 < eta <= 1.0):
            raise ValueError(f"efcomm: ef21-sgdm eta ({eta!r}) must be in (0, 1]")
        super().__init__(dense_start)
        self.eta = float(eta)

    def init_state(self, g, g_mean, worker):
        if g_mean is None:  # dense_start=False: v_i = g_i (local), h_i = h = 0
            return {"v": g.detach().clone(), "h_local": torch.zeros_like(g), "h": torch.zeros_like(g)}
        return {"v": g.detach().clone(), "h_local": g.detach().clone(), "h": g_mean}

    def encode(self, g, state, codec, worker):
        state["v"].lerp_(g, self.eta)
        return codec.encode_(state["v"], state["h_local"])

    def __repr__(self) -> str:
        return f"EF21SGDM(eta={self.eta})" if self.dense_init else f"EF21SGDM(eta={self.eta}, dense_start=False)"


@register_method
class EControl(EF21):
    """``econtrol``: Gao, Islamov, Stich 2023, "EControl: Fast Distributed Optimization with
    Compression and Error Control" (arXiv 2311.05645). Worker: delta_i = C(eta e_i + g_i - h_i);
    e_i += g_i - h_i - delta_i; h_i += delta_i. Aggregate: h += (1/n) sum_j delta_j; out = h.

    Init (dense exchange, as EF21) e_i = 0, h_i = g_i, h = mean_j g_j; eta = 0 is EF21. The
    default ``eta=None`` uses the compressor's alpha for each bucket (k/d for Top-k): efcomm's
    choice, as the paper's analysis takes eta proportional to alpha; neither this default nor
    the initial state could be confirmed from the paper's text here (only its abstract was
    readable). A fixed eta far above alpha diverges: eta = 0.1 with Top-1 of 100 coordinates
    did in our simulations. A fixed eta above a bucket's alpha therefore warns (a
    ``UserWarning``, once per bucket size), and does not raise: the analysis' condition is
    sufficient, not necessary (eta somewhat above alpha converged in our runs), so a user who
    tuned eta on purpose keeps running.
    """

    name = "econtrol"
    reform = {"e": None, "h_local": "h"}

    def __init__(self, eta: Optional[float] = None) -> None:
        if eta is not None and not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ValueError(f"efcomm: econtrol eta ({eta!r}) must be None or in [0, 1]")
        self.eta = None if eta is None else float(eta)
        self._warned: set = set()  # bucket sizes whose alpha eta exceeds, already warned of

    def init_state(self, g, g_mean, worker):
        return {"e": torch.zeros_like(g), "h_local": g.detach().clone(), "h": g_mean}

    def _eta(self, compressor, numel: int) -> float:
        alpha = compressor.alpha(numel)
        if self.eta is None:
            return alpha
        if self.eta > alpha and numel not in self._warned:
            self._warned.add(numel)
            warnings.warn(
                f"efcomm: econtrol eta ({self.eta}) exceeds the compressor's alpha ({alpha:.4g}) on a bucket of "
                f"{numel} elements; EControl's analysis takes eta of the order of alpha, and eta far above it "
                "diverges (eta=None uses alpha)",
                stacklevel=2,
            )
        return self.eta

    def encode(self, g, state, codec, worker):
        eta = self._eta(codec.compressor, g.numel())
        e, h_local = state["e"], state["h_local"]
        r = g - h_local  # each torch op rounds to the dtype once
        p = r + e * eta
        e.add_(r)
        message = codec.encode_(p)
        codec.decode_add_(e, message.unsqueeze(0), scale=-1.0)  # e += r - delta
        codec.decode_add_(h_local, message.unsqueeze(0))  # h_local += delta
        return message

    def __repr__(self) -> str:
        return f"EControl(eta={self.eta})"


@register_method
class EF21W(EF21):
    """``ef21-w``: weighted EF21 (Richtarik, Gasanov, Burlachenko 2024, "Error Feedback
    Reloaded: From Quadratic to Arithmetic Mean of Smoothness Constants", arXiv 2402.10774).

    Weights w_i > 0 summing to 1, one per rank, the same on every rank: given, or
    w_i = L_i / sum_j L_j from the workers' smoothness constants (``EF21W.from_smoothness``;
    the simulator knows them for its problems; a DDP run estimates them with
    ``efcomm.estimate_smoothness``). Worker: c_i = C(g_i / (n w_i) - h_i); h_i += c_i.
    Aggregate: h += sum_j w_j c_j; out = h, so that h = sum_j w_j h_j tracks (1/n) sum_j g_j.
    With uniform weights it is EF21. With a positively homogeneous compressor (Top-k: TopK(s v)
    = s TopK(v), s > 0) its iterates are EF21's (h_i(W) = h_i / (n w_i)): what the paper
    improves is the step size its analysis allows (efcomm.sim.ef21_stepsize), not the
    iterates.
    """

    name = "ef21-w"

    def __init__(self, weights: Sequence[float]) -> None:
        weights = [float(w) for w in weights]
        if not weights or any(not (w > 0.0 and math.isfinite(w)) for w in weights):
            raise ValueError(f"efcomm: ef21-w weights ({weights!r}) must be positive and finite")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"efcomm: ef21-w weights ({weights!r}) must sum to 1 (they sum to {sum(weights)})")
        self.weights = weights
        self._on_device: dict = {}  # the weights as the decode op takes them, per device

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
        return codec.encode_(self._scaled(g, worker), state["h_local"])

    def decode(self, state, gathered, codec, g, worker):
        device = state["h"].device
        if device not in self._on_device:  # uploaded once per device, not per step
            self._on_device[device] = torch.tensor(self.weights, dtype=torch.float32, device=device)
        codec.decode_add_(state["h"], gathered, weights=self._on_device[device])
        return state["h"]

    def __getstate__(self) -> dict:
        return {"weights": self.weights, "_on_device": {}}

    def __repr__(self) -> str:
        return f"EF21W(weights={self.weights})"


@register_method
class Clip21(EF21):
    """``clip21``: EF21 with the clipping operator as its compressor (Khirirat, Gorbunov,
    Horvath, Islamov, Karray, Richtarik 2023, "Clip21: Error Feedback for Gradient Clipping",
    arXiv 2305.18929): c_i = clip_tau(g_i - h_i) = min(1, tau / ||g_i - h_i||) (g_i - h_i);
    h_i += c_i; h += (1/n) sum_j c_j; out = h. Each worker's message is bounded by tau in
    norm (its use is bounded per-worker sensitivity), and dense: no compression gain; the
    compressor argument is not used (it sends with efcomm.Clip(tau)). The state starts at
    h_i = h = 0, so that no unclipped gradient is ever sent. The clip factor is computed per
    bucket.
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

    def wire_compressor(self, compressor):
        return Clip(self.tau)

    def init_state(self, g, g_mean, worker):
        return {"h_local": torch.zeros_like(g), "h": torch.zeros_like(g)}

    def __repr__(self) -> str:
        return f"Clip21(tau={self.tau})"
