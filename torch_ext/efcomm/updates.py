"""Compressing each rank's optimizer update instead of its gradient (the form that keeps AdamW's loss).

    opt = efcomm.compress_updates(ddp_model, torch.optim.AdamW(ddp_model.parameters(), lr=3e-3))
    for x, y in data:
        opt.zero_grad()
        loss_fn(ddp_model(x), y).backward()   # no gradient traffic: DDP's all-reduce is replaced
        opt.step()                            # local AdamW step; every `every` steps, one exchange

AdamW normalises each coordinate after the exchange, so a sparse, delayed gradient becomes a
wrong step that error feedback cannot repay (docs/convergence.md measures it). The methods that
reach about 1 % of the bytes at language-model quality compress after the optimizer instead:
each rank's inner optimizer steps on its own gradient, and the parameter change since the last
exchange (DiLoCo's "pseudo-gradient", Douillard et al. 2023, arXiv 2311.08105) goes through
error feedback and a compressor (SparseLoCo, Sarfi et al. 2025, arXiv 2508.15706: Top-k per
chunk with 2-bit values; CocktailSGD, Wang et al. 2023). Here the exchange is efcomm's own step
engine (efcomm.engine.bucket_step: the methods, compressors, compact messages, statistics and
checkpoints of the DDP hook) over the DDP transport, and every rank then applies the same outer
step to the mean of what was sent:

    delta_i = x_anchor - x_i                       (this rank's change since the last exchange)
    out     = method's aggregate of C(delta_i)     (EF: (1/n) sum_j C(delta_j + e_j), e_j kept)
    m       = mu m + out                           (outer momentum; mu = 0: none)
    x       = x_anchor - outer_lr (out + mu m)     (Nesterov, as DiLoCo's outer SGD; or m)
    x_anchor = x                                   (bit-identical on every rank)

With ``every=1``, ``outer_lr=1``, an inner SGD and ``Identity``, a step equals DDP's dense SGD
(to rounding); with ``every=H`` and ``Identity`` it is periodic model averaging.
"""

import math
from collections import OrderedDict
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .compressors import Compressor, ScaledSign
from .engine import BucketInput, bucket_step
from .hook import check_agreement
from .methods import Worker
from .state import EFState
from .transport import DDPTransport, _completed

# What compress_updates uses when not told otherwise (docs/convergence.md, "Compressing the
# update", gives the sweep that chose them).
DEFAULT_EVERY = 4
DEFAULT_OUTER_LR = 1.0


def default_update_compressor() -> Compressor:
    """A scaled sign per block of 1024 entries (1 bit per entry and a float32 scale per block: 3.2 %
    of a float32 change's bytes; every 4 steps, 0.81 % of DDP's bytes per step). In the sweep it
    ended below SparseLoCo's chunked 2-bit Top-k (``ChunkTopK(0.2, bits=2)`` every 10 steps) on both
    corpora at 1,000 steps (3-seed means; docs/convergence.md)."""
    return ScaledSign(block=1024)


def _local_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook that exchanges nothing: each rank keeps its own gradient."""
    buffer = bucket.buffer()
    return _completed(buffer, buffer)


class CompressedUpdates(torch.optim.Optimizer):
    """An optimizer that steps ``inner`` on this rank's gradient and exchanges compressed
    parameter changes every ``every`` steps (see the module's doc). Made by
    :func:`compress_updates`; its ``param_groups`` and ``state`` are the inner optimizer's, so LR
    schedulers, gradient clipping and GradScaler work on it as on the inner one.

    Attributes: ``inner`` (the wrapped optimizer), ``ef_state`` (the :class:`efcomm.EFState` of
    the exchange: method, compressor, per-bucket error-feedback state), ``stats`` (its
    :class:`efcomm.CommStats`: ``stats.steps`` counts exchanges, ``dense_bytes`` what DDP's
    all-reduce of the gradient would have sent over every optimizer step), ``steps`` (optimizer
    steps taken), ``skipped_steps`` (steps whose gradient held inf/NaN on this rank: the inner
    optimizer did not step), ``rejected_exchanges`` (exchanges whose aggregate held inf/NaN:
    not applied, the parameters stay at the last exchange's).
    """

    _step_supports_amp_scaling = True  # GradScaler calls step() on every rank, with found_inf

    def __init__(
        self,
        model: nn.Module,
        inner: torch.optim.Optimizer,
        ef_state: EFState,
        every: int,
        outer_lr: float,
        outer_momentum: float,
        nesterov: bool,
        bucket_cap_mb: float,
    ) -> None:
        self.defaults = inner.defaults
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self.inner = inner
        self.ef_state = ef_state
        self.every = every
        self.outer_lr = outer_lr
        self.outer_momentum = outer_momentum
        self.nesterov = nesterov
        self.steps = 0
        self.skipped_steps = 0
        self.rejected_exchanges = 0
        params = [p for group in inner.param_groups for p in group["params"]]
        self._buckets = _buckets(params, bucket_cap_mb)
        self._delta_dtype = ef_state.state_dtype or torch.float32
        self._anchors = [torch.cat([p.detach().reshape(-1).to(self._delta_dtype) for p in b]) for b in self._buckets]
        self._momenta: Optional[list] = None
        self._exchanged_at = 0  # the step count at the last exchange

    # ---- what the inner optimizer owns -----------------------------------------------------

    @property
    def param_groups(self) -> list:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def stats(self):
        return self.ef_state.stats

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError(
            "efcomm.compress_updates: parameters added after wrapping would never be exchanged; add the group "
            "to the inner optimizer before calling compress_updates"
        )

    def __repr__(self) -> str:
        return (
            f"CompressedUpdates(every={self.every}, outer_lr={self.outer_lr}, outer_momentum={self.outer_momentum}, "
            f"method={self.ef_state.method_impl!r}, compressor={self.ef_state.compressor!r}, inner={self.inner!r})"
        )

    # ---- the step ----------------------------------------------------------------------------

    def step(self, closure=None):
        """The inner optimizer's step on this rank's gradient (skipped on this rank when the
        gradient holds inf/NaN, as GradScaler would skip it), then, every ``every`` steps, the
        exchange and the outer step, which every rank takes together."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._gradients_finite():
            self.inner.step()
        else:
            self.skipped_steps += 1
        self.steps += 1
        if self.steps % self.every == 0:
            self.exchange()
        return loss

    def _gradients_finite(self) -> bool:
        """Whether this rank's gradients are finite: GradScaler's verdict when it called step
        (``found_inf``; it then also hands over the scale still on the gradients), else one
        fused pass over the gradients."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        found_inf = getattr(self, "found_inf", None)
        scale = getattr(self, "grad_scale", None)
        if found_inf is not None:
            if bool(found_inf):
                return False
            if scale is not None and grads:
                torch._foreach_mul_(grads, scale.double().reciprocal().float())
            return True
        if not grads:
            return True
        norms = torch._foreach_norm(grads)
        return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())

    @torch.no_grad()
    def exchange(self) -> None:
        """Exchanges the compressed parameter changes since the last exchange and applies the
        outer step (every rank must call it at the same point; :meth:`step` does, every
        ``every`` steps). After it every rank holds the same parameters, bit for bit."""
        state = self.ef_state
        group = state.process_group
        if not state._config_checked:
            check_agreement(state)
        worker = Worker(dist.get_rank(group), dist.get_world_size(group))
        transport = DDPTransport(group)
        since = self.steps - self._exchanged_at
        outs = []
        for b, (params, anchor) in enumerate(zip(self._buckets, self._anchors)):
            current = torch.cat([p.detach().reshape(-1).to(self._delta_dtype) for p in params])
            delta = anchor - current
            signature = (str(delta.dtype), delta.numel(), tuple((_name(p, self), tuple(p.shape)) for p in params))
            dense = sum(p.numel() * p.element_size() for p in params) * since
            bucket = BucketInput(delta, signature, worker, dense, last=b == len(self._buckets) - 1)
            outs.append(transport.run_blocking(bucket_step(state, bucket)))
        self._exchanged_at = self.steps
        if not all(bool(torch.isfinite(out).all()) for out in outs):
            # The aggregate held inf/NaN (the same on every rank): the parameters go back to the
            # last exchange's; the engine restarts the poisoned buckets' state at the next one.
            self.rejected_exchanges += 1
            self._write(self._anchors)
            return
        if self.outer_momentum:
            if self._momenta is None:
                self._momenta = [torch.zeros_like(a) for a in self._anchors]
            for m, out in zip(self._momenta, outs):
                m.mul_(self.outer_momentum).add_(out)
            steps = [
                out.add(m, alpha=self.outer_momentum) if self.nesterov else m for out, m in zip(outs, self._momenta)
            ]
        else:
            steps = outs
        for anchor, step in zip(self._anchors, steps):
            anchor.sub_(step, alpha=self.outer_lr)
        self._write(self._anchors)

    def _write(self, flats: list) -> None:
        for params, flat in zip(self._buckets, flats):
            offset = 0
            for p in params:
                p.detach().copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This rank's state under its rank (``{"ranks": {"<rank>": ...}}``, as EFState's, so
        that every rank's lands under its own keys in one torch.distributed.checkpoint): the
        inner optimizer's state (each rank's own), the exchange's error-feedback state, the
        anchor and outer momentum (the same on every rank), this rank's parameters (they differ
        between exchanges) and the step counts."""
        ef = self.ef_state.state_dict()
        (rank_key,) = ef["ranks"]
        inner = self.inner.state_dict()
        # Per-parameter state under "param<i>", not under the index itself: a DCP load turns
        # dicts keyed by digits into lists, which would lose the indices of stateless parameters.
        inner["state"] = {f"param{i}": v for i, v in inner["state"].items()}
        entry = {
            "inner": inner,
            "efcomm": ef["ranks"][rank_key],
            "config": self._config(),
            "anchors": [a.clone() for a in self._anchors],
            "momenta": None if self._momenta is None else [m.clone() for m in self._momenta],
            "params": [torch.cat([p.detach().reshape(-1) for p in params]).clone() for params in self._buckets],
            "steps": self.steps,
            "exchanged_at": self._exchanged_at,
            "skipped_steps": self.skipped_steps,
            "rejected_exchanges": self.rejected_exchanges,
        }
        return {"ranks": {rank_key: entry}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores a state saved by :meth:`state_dict`, the parameters included (so that it may
        come before or after the model's own load): the same rank's continues bit for bit; at
        another world size (any rank's entry), every rank restarts from the last exchange's
        parameters and the error-feedback state is re-formed by the method's elastic rule."""
        ranks = state_dict.get("ranks")
        if not isinstance(ranks, dict) or len(ranks) != 1:
            raise ValueError(
                "efcomm.compress_updates: a state dict holds one rank's state under 'ranks'; this one holds "
                f"{sorted(ranks) if isinstance(ranks, dict) else None!r}"
            )
        ((key, entry),) = ranks.items()
        if entry["config"] != self._config():
            raise ValueError(
                f"efcomm.compress_updates: checkpoint configuration {entry['config']} differs from this one's "
                f"{self._config()}"
            )
        anchors = entry["anchors"]
        shapes = [a.shape for a in self._anchors]
        if [a.shape for a in anchors] != shapes:
            raise ValueError(
                f"efcomm.compress_updates: the checkpoint's parameter buckets {[tuple(a.shape) for a in anchors]} "
                f"differ from this model's {[tuple(s) for s in shapes]}"
            )
        inner = dict(entry["inner"])
        inner["state"] = {int(k[len("param") :]): v for k, v in inner["state"].items()}
        self.inner.load_state_dict(inner)
        self.ef_state.load_state_dict({"ranks": {key: entry["efcomm"]}})
        device = self._anchors[0].device
        self._anchors = [a.to(device=device, dtype=self._delta_dtype).clone() for a in anchors]
        momenta = entry.get("momenta")
        self._momenta = None if momenta is None else [m.to(device).clone() for m in momenta]
        self.steps = int(entry["steps"])
        self._exchanged_at = int(entry["exchanged_at"])
        self.skipped_steps = int(entry["skipped_steps"])
        self.rejected_exchanges = int(entry["rejected_exchanges"])
        saved_world, saved_rank = entry["efcomm"].get("world_size"), entry["efcomm"].get("rank")
        group = self.ef_state.process_group
        here = (dist.get_world_size(group), dist.get_rank(group)) if dist.is_initialized() else (None, None)
        if saved_world is None or (saved_world, saved_rank) == here:
            self._write([p.to(device) for p in entry["params"]])
        else:  # elastic: the local progress since the last exchange belonged to other ranks
            self._write(self._anchors)
            self._exchanged_at = self.steps

    def _config(self) -> dict:
        return {
            "every": self.every,
            "outer_lr": self.outer_lr,
            "outer_momentum": self.outer_momentum,
            "nesterov": self.nesterov,
            "delta_dtype": str(self._delta_dtype),
            "buckets": [[(_name(p, self), tuple(p.shape)) for p in params] for params in self._buckets],
        }


def _name(param: Tensor, opt: CompressedUpdates) -> str:
    return opt.ef_state.param_names.get(id(param), "")


def _buckets(params: list, cap_mb: float) -> list:
    """The parameters cut into buckets in the optimizer's order: one dtype per bucket, at most
    ``cap_mb`` MiB each (a parameter larger than the cap is a bucket of its own)."""
    cap = cap_mb * 2**20
    buckets, open_bucket = [], {}  # open_bucket: dtype -> (its bucket, its bytes so far)
    for p in params:
        nbytes = p.numel() * p.element_size()
        bucket, size = open_bucket.get(p.dtype, (None, 0))
        if bucket is None or size + nbytes > cap:
            bucket, size = [], 0
            buckets.append(bucket)
        bucket.append(p)
        open_bucket[p.dtype] = (bucket, size + nbytes)
    return buckets


def compress_updates(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method="ef",
    compressor: Optional[Compressor] = None,
    every: Optional[int] = None,
    outer_lr: Optional[float] = None,
    *,
    outer_momentum: float = 0.0,
    nesterov: bool = True,
    process_group: Optional[dist.ProcessGroup] = None,
    bucket_cap_mb: float = 25.0,
    **options,
) -> CompressedUpdates:
    """Wraps ``optimizer`` (any ``torch.optim`` optimizer over ``model``'s parameters) so that each
    rank steps on its own gradient and the ranks exchange compressed parameter changes every
    ``every`` steps (see the module's doc). Returns a :class:`CompressedUpdates`, to use in
    place of ``optimizer`` (``step``, ``zero_grad``, ``param_groups``, ``state_dict`` /
    ``load_state_dict``, DCP ``Stateful``, ``stats``). Every rank must call it.

    Args:
        model: a ``DistributedDataParallel`` (its all-reduce is replaced by a hook that keeps each
            rank's gradient: no gradient traffic), or a plain module replicated on every rank
            (its parameters are broadcast from rank 0 here, as DDP does).
        optimizer: the inner optimizer (AdamW, SGD, Adam, ...), over parameters of ``model``.
        method, compressor: the exchange's error-feedback method and compressor, as for
            :func:`efcomm.register` (default: classic EF with ``ScaledSign(block=1024)``: one bit
            per entry and a scale per 1024 entries, 3.2 % of the change's bytes;
            ``ChunkTopK(0.2, bits=2)`` with ``every=10`` is SparseLoCo's message).
        every: optimizer steps between exchanges (default 4: 0.81 % of DDP's bytes per step
            with the default compressor).
        outer_lr: the outer step size (default 1.0: the mean change is applied as is).
        outer_momentum, nesterov: DiLoCo's outer Nesterov momentum (e.g. 0.9 with outer_lr 0.7);
            0 (the default): none.
        process_group: the group to exchange over (None: DDP's, or the default group).
        bucket_cap_mb: the exchange cuts the parameters into buckets of at most this size.
        options: :class:`efcomm.EFState` options (``min_compress_numel``, ``state_dtype``: the dtype
            of the changes and the state, default float32; ``seed``, ``dense_steps``,
            ``sparsity_warmup``, ...).
    """
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    if not isinstance(model, nn.Module):
        raise TypeError(f"efcomm.compress_updates: model must be an nn.Module or DDP; got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer) or isinstance(optimizer, CompressedUpdates):
        raise TypeError(
            f"efcomm.compress_updates: optimizer must be a torch.optim.Optimizer (not already wrapped); "
            f"got {type(optimizer).__name__}"
        )
    every = DEFAULT_EVERY if every is None else every
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"efcomm.compress_updates: every ({every!r}) must be an int >= 1")
    outer_lr = DEFAULT_OUTER_LR if outer_lr is None else outer_lr
    if (
        not isinstance(outer_lr, (int, float))
        or isinstance(outer_lr, bool)
        or not (math.isfinite(outer_lr) and outer_lr > 0)
    ):
        raise ValueError(f"efcomm.compress_updates: outer_lr ({outer_lr!r}) must be a finite number > 0")
    if not isinstance(outer_momentum, (int, float)) or not 0.0 <= outer_momentum < 1.0:
        raise ValueError(f"efcomm.compress_updates: outer_momentum ({outer_momentum!r}) must be in [0, 1)")
    if not (isinstance(bucket_cap_mb, (int, float)) and bucket_cap_mb > 0):
        raise ValueError(f"efcomm.compress_updates: bucket_cap_mb ({bucket_cap_mb!r}) must be > 0")
    if "hierarchy" in options:
        raise ValueError("efcomm.compress_updates: hierarchy is not supported yet (the exchange is flat)")
    _reject_fsdp(model)
    module = model.module if ddp else model
    owned = {id(p) for p in module.parameters()}
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if id(p) not in owned:
                raise ValueError(
                    f"efcomm.compress_updates: the optimizer's param_groups[{g}]['params'][{i}] (shape "
                    f"{tuple(p.shape)}) is not a parameter of the model"
                )
    if not dist.is_initialized():
        raise RuntimeError("efcomm.compress_updates: initialise torch.distributed (init_process_group) first")
    group = process_group if process_group is not None else (model.process_group if ddp else None)
    if ddp:
        model.register_comm_hook(None, _local_hook)
    else:
        for p in module.parameters():
            dist.broadcast(p.detach(), src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    names = {id(p): name for name, p in module.named_parameters()}
    compressor = default_update_compressor() if compressor is None else compressor
    state = EFState(method, compressor, group, param_names=names, **options)
    opt = CompressedUpdates(
        model, optimizer, state, every, float(outer_lr), float(outer_momentum), nesterov, bucket_cap_mb
    )
    _check_ranks_agree(opt, group)
    return opt


def _reject_fsdp(model: nn.Module) -> None:
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in model.modules()):
        raise NotImplementedError(
            "efcomm.compress_updates: FSDP2/HSDP models are not supported yet (the update exchange over the "
            "replicate group comes later); use efcomm.register_fsdp to compress the gradient exchange"
        )


def _check_ranks_agree(opt: CompressedUpdates, group) -> None:
    """Every rank gathers every rank's configuration (outer step, buckets, method and
    compressor) and raises alike if any differs, instead of deadlocking later."""
    mine = {"updates": opt._config(), "efcomm": opt.ef_state.config()}
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    differing = [r for r, c in enumerate(everyone) if c != everyone[0]]
    if differing:
        raise RuntimeError(
            f"efcomm.compress_updates: ranks disagree on the configuration: ranks {differing} differ from rank 0; "
            f"rank 0 has {everyone[0]}, rank {differing[0]} has {everyone[differing[0]]}"
        )
