"""MoTEF: momentum tracking with error feedback, in its complete-graph form."""

import torch
from torch import Tensor

from .. import ops
from .base import Method, register_method


@register_method
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

    from H = G = 0 and M_i = V_i = grad f_i(x_0); eta is the step size. The authors' two
    scripts differ here (github.com/mlolab/MoTEF at commit 27dc47a): ``MoTEF.py``
    (``BEER_Momentum.init``) starts M at 0 with V = grad f_i(x_0), ``synthetic/solvers.py``
    (``beerM``) starts M = V = grad f_i(x_0). efcomm follows the latter: starting M with V
    keeps mean V = mean M, the tracking invariant (starting M at 0 leaves mean V - mean M =
    mean grad f_i(x_0) forever, and in our simulations the iterates never settled). The class
    defaults of ``MoTEF.py`` are gamma 0.1 and lambda 0.9, as here; the authors' momentum
    experiment (``synthetic/experiments/momentum.py``) sweeps lambda over 1, 0.5, 0.05 and
    0.005: the effect of momentum needs lambda well below 0.9.

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
    # M_i = V_i = G_i := G (the shared tracker) keeps G = mean_i G_i and mean V = mean M.
    reform = {"M": "G_mean", "V": "G_mean", "G": "G_mean"}

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
            return {
                "H": z.clone(),
                "H_mean": z.clone(),
                "G": z.clone(),
                "G_mean": z.clone(),
                "M": g.clone(),
                "V": g.clone(),
            }
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
        return codec.encode_(state["V"], state["G"])

    def decode(self, state, gathered, codec, g, worker):
        codec.decode_add_(state["G_mean"], gathered)
        return state["G_mean"]

    def __repr__(self) -> str:
        return f"MoTEF(gamma={self.gamma}, lam={self.lam}, per_worker={self.per_worker_iterates})"
