"""Training in one process: world ranks of the demo's MLP, each with its own model, data shard
and optimizer, whose bucket gradients go through efcomm's step engine with the in-process
transport (efcomm.cluster) instead of DDP. The step logic is the hook's; only DDP is missing,
so these runs test the step logic fast, without starting processes."""

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

import efcomm
from efcomm.cluster import Cluster
from efcomm.harness import _batch, make_dataset, make_model
from efcomm.state import per_rank


@dataclass
class LocalRun:
    """What one rank ends with (the fields the DDP harness reports, same names)."""

    params: torch.Tensor
    train_loss: float
    test_accuracy: float
    ef_state: Optional[dict]
    stats: dict = field(default_factory=dict)


class LocalTraining:
    """``world`` ranks; ``buckets`` lists the parameter names of each bucket (default: one
    bucket of every parameter, in reverse registration order, as DDP fills its first bucket);
    ``method`` "dense" averages the gradients exactly instead."""

    def __init__(
        self,
        world: int,
        method="ef21",
        compressor=None,
        *,
        ratio: float = 0.1,
        lr: float = 0.01,
        momentum: float = 0.9,
        batch_size: int = 64,
        seed: int = 0,
        buckets: Optional[list] = None,
        model_dtype: torch.dtype = torch.float32,
        **options,
    ) -> None:
        torch.set_num_threads(1)
        self.world, self.method, self.batch_size = world, method, batch_size
        (train_x, train_y), (self.test_x, self.test_y) = make_dataset(seed)
        self.train_x, self.train_y = train_x, train_y
        self.shards = [(train_x[r::world].to(model_dtype), train_y[r::world]) for r in range(world)]
        self.models = [make_model(seed).to(model_dtype) for _ in range(world)]
        self.optimizers = [torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum) for m in self.models]
        names = [name for name, _ in self.models[0].named_parameters()]
        self.buckets = buckets if buckets is not None else [names[::-1]]
        self.cluster = None
        if method != "dense":
            compressor = efcomm.TopK(ratio) if compressor is None else compressor
            options.setdefault("min_compress_numel", 1024)
            options.setdefault("seed", seed)
            allow = getattr(method, "name", method) == "none"
            self.cluster = Cluster.create(world, method, compressor, allow_biased=allow, **options)
        self.step_count = 0
        self.loss_fn = nn.CrossEntropyLoss()

    @property
    def states(self) -> list:
        return self.cluster.states

    def _signature(self, names: list, dtype: torch.dtype) -> tuple:
        params = dict(self.models[0].named_parameters())
        shapes = tuple((name, tuple(params[name].shape)) for name in names)
        return (str(dtype), sum(params[n].numel() for n in names), shapes)

    def train(self, steps: int, corrupt: Optional[dict] = None) -> None:
        """``steps`` steps; ``corrupt`` {step: rank} makes that rank's gradients inf at that
        step, and every rank then skips the optimizer step (as GradScaler does)."""
        for _ in range(steps):
            grads = []
            for rank, (model, (x, y)) in enumerate(zip(self.models, self.shards)):
                xb, yb = _batch(x, y, self.step_count, self.batch_size)
                model.zero_grad()
                loss = self.loss_fn(model(xb).float(), yb)
                if corrupt and corrupt.get(self.step_count) == rank:
                    loss = loss * float("inf")
                loss.backward()
                grads.append(dict(model.named_parameters()))
            finite = self._exchange(grads)
            if finite:
                for opt in self.optimizers:
                    opt.step()
            self.step_count += 1

    def _exchange(self, params_of_rank: list) -> bool:
        """Replaces every rank's gradients with the step's output, bucket by bucket."""
        state_dtype = self.cluster.states[0].state_dtype if self.cluster else None
        for b, names in enumerate(self.buckets):
            flat = [torch.cat([p[n].grad.reshape(-1) for n in names]) for p in params_of_rank]
            dtype = state_dtype or flat[0].dtype
            if self.cluster is None:
                outs = [sum(f / self.world for f in flat)] * self.world
            else:
                grads = [f.to(dtype) for f in flat]
                last = b == len(self.buckets) - 1
                outs = self.cluster.step_bucket(grads, self._signature(names, dtype), last=last)
            for p, out in zip(params_of_rank, outs):
                offset = 0
                for n in names:
                    g = p[n].grad
                    g.copy_(out[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
        return all(torch.isfinite(p.grad).all() for p in params_of_rank[0].values())

    def state_dicts(self) -> list:
        """Per rank: model, optimizer, efcomm state and step, as a checkpoint holds them."""
        return [
            {
                "model": {k: v.clone() for k, v in m.state_dict().items()},
                "optimizer": o.state_dict(),
                "ef_state": s.state_dict() if self.cluster else None,
                "step": self.step_count,
            }
            for m, o, s in zip(
                self.models, self.optimizers, self.cluster.states if self.cluster else [None] * self.world
            )
        ]

    def load_state_dicts(self, checkpoints: list) -> None:
        for rank, ckpt in enumerate(checkpoints):
            if ckpt is None:  # this rank loads nothing
                continue
            ckpt = copy.deepcopy(ckpt)  # as from its own file: ranks may load the same one
            self.models[rank].load_state_dict(ckpt["model"])
            self.optimizers[rank].load_state_dict(ckpt["optimizer"])
            if self.cluster is not None:
                self.cluster.states[rank].load_state_dict(ckpt["ef_state"])
            self.step_count = ckpt["step"]

    def results(self) -> list:
        out = []
        with torch.no_grad():
            for rank, model in enumerate(self.models):
                dtype = next(model.parameters()).dtype
                logits = model(self.train_x.to(dtype)).float()
                train_loss = self.loss_fn(logits, self.train_y).item()
                accuracy = (model(self.test_x.to(dtype)).float().argmax(1) == self.test_y).float().mean().item()
                state = self.cluster.states[rank] if self.cluster else None
                out.append(
                    LocalRun(
                        params=torch.cat([p.detach().reshape(-1).float() for p in model.parameters()]),
                        train_loss=train_loss,
                        test_accuracy=accuracy,
                        ef_state=per_rank(state.state_dict()) if state else None,
                        stats=state.stats.state_dict() if state else {},
                    )
                )
        return out


def run_local(world: int, steps: int, method="ef21", **kwargs) -> list:
    training = LocalTraining(world, method, **kwargs)
    training.train(steps)
    return training.results()
