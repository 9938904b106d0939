"""Transports: what carries out the exchanges a step asks for (efcomm.engine).

* :class:`DDPTransport` runs one rank's step with collectives on a process group (NCCL,
  gloo). Exchanges that are not the step's last are issued and waited for on the calling
  thread (with NCCL, waiting orders the current stream after the collective and does not
  block the host; a gather of choices is read on the host by design). The last exchange is
  asynchronous: the rest of the step runs in its future's callback, and the hook returns
  that future. Every collective is issued from the hook's own call, so every rank issues
  them in the same order.
* :class:`InProcessTransport` runs the steps of n workers held in one process in lockstep:
  each exchange is served by stacking the workers' messages in rank order. The simulator
  and the in-process tests use it, so that they run exactly the hook's step.
"""

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .engine import (
    AllGather,
    AllGatherShards,
    AllReduceSum,
    AllToAll,
    Broadcasts,
    GatherChoices,
    ReduceScatter,
    Step,
)


class DDPTransport:
    """Exchanges for the rank that calls it: over ``group`` (None: the default group), or,
    for the "intra" and "inter" exchanges of a hierarchy, over its groups."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, hierarchy=None) -> None:
        self.groups = {"flat": group}
        if hierarchy is not None:
            self.groups.update(intra=hierarchy.intra_group, inter=hierarchy.inter_group)

    def run(self, step: Step, finish) -> torch.futures.Future:
        """Drives ``step``; ``finish(out)`` turns the step's output into the future's value
        (the hook copies it into the DDP bucket). Returns the future."""
        value = None
        while True:
            try:
                request = step.send(value)
            except StopIteration as done:
                return _completed(finish(done.value), done.value)
            if not request.final:
                value = self._wait(request)
                continue
            work, result = self._issue(request)

            def resume(fut: torch.futures.Future, result=result):
                fut.value()
                try:
                    step.send(result)
                except StopIteration as done:
                    return finish(done.value)
                raise RuntimeError("efcomm: a step asked for an exchange after its final one")

            return work.get_future().then(resume)

    def run_blocking(self, step: Step) -> Tensor:
        """Drives ``step`` with every exchange waited for on the calling thread, and returns its
        output. With NCCL the wait orders the current stream after the collective and does not
        block the host, so the whole step (encode, collectives, decode) runs on the caller's
        stream: the FSDP hooks use it, which must leave their output written on FSDP's
        all-reduce (or reduce-scatter) stream when they return."""
        value = None
        while True:
            try:
                request = step.send(value)
            except StopIteration as done:
                return done.value
            value = self._wait(request)

    def _issue(self, request):
        """Starts the collective of an exchange: (work, the value the step gets back)."""
        group = self.groups[request.group]
        if isinstance(request, AllGather):
            world = dist.get_world_size(group)
            message = request.message
            gathered = message.new_empty((world * message.numel(),))  # flat: gloo splits it by rank
            work = dist.all_gather_into_tensor(gathered, message, group=group, async_op=True)
            return work, gathered.view(world, -1)
        if isinstance(request, AllReduceSum):
            return dist.all_reduce(request.tensor, group=group, async_op=True), request.tensor
        if isinstance(request, Broadcasts):
            works = [
                dist.broadcast(row, group=group, group_src=rank, async_op=True)
                for rank, row in zip(request.senders, request.rows)
            ]
            return _AllWorks(works), request.rows
        if isinstance(request, ReduceScatter):
            shard = request.tensor.new_empty((request.tensor.numel() // dist.get_world_size(group),))
            return dist.reduce_scatter_tensor(shard, request.tensor, group=group, async_op=True), shard
        if isinstance(request, AllGatherShards):
            full = request.shard.new_empty((request.shard.numel() * dist.get_world_size(group),))
            return dist.all_gather_into_tensor(full, request.shard, group=group, async_op=True), full
        if isinstance(request, AllToAll):
            received = torch.empty_like(request.messages)
            return dist.all_to_all_single(received, request.messages, group=group, async_op=True), received
        raise TypeError(f"efcomm: unknown exchange {type(request).__name__}")

    def _wait(self, request):
        if isinstance(request, GatherChoices):
            group = self.groups[request.group]
            world = dist.get_world_size(group)
            values = request.values
            gathered = torch.empty(world * values.numel(), dtype=values.dtype, device=values.device)
            dist.all_gather_into_tensor(gathered, values, group=group)
            return gathered.view(world, -1).tolist()  # the same on every rank
        work, result = self._issue(request)
        work.wait()
        return result


class _AllWorks:
    """Several collectives' works as one (their futures collected)."""

    def __init__(self, works: list) -> None:
        self.works = works

    def get_future(self) -> torch.futures.Future:
        return torch.futures.collect_all([w.get_future() for w in self.works])

    def wait(self) -> None:
        for w in self.works:
            w.wait()


def _completed(value, out: Tensor) -> torch.futures.Future:
    done = torch.futures.Future(devices=[out.device] if out is not None and out.is_cuda else None)
    done.set_result(value)
    return done


class InProcessTransport:
    """Serves the exchanges of n workers' steps run in lockstep in one process. With
    ``local_size`` (a hierarchy of nodes of local_size consecutive ranks), "intra" exchanges
    are served per node and "inter" exchanges per local rank."""

    def __init__(self, local_size: Optional[int] = None) -> None:
        self.local_size = local_size

    def run(self, steps: list) -> list:
        """Drives every worker's step to its end; returns their outputs, in rank order."""
        n = len(steps)
        values = [None] * n
        outs = [None] * n
        while True:
            requests = []
            for rank, step in enumerate(steps):
                try:
                    requests.append(step.send(values[rank]))
                except StopIteration as done:
                    outs[rank] = done.value
                    requests.append(None)
            if all(r is None for r in requests):
                return outs
            kinds = {(type(r).__name__, getattr(r, "group", None)) for r in requests}
            if len(kinds) != 1:
                raise RuntimeError(f"efcomm: the workers' steps ask for different exchanges: {sorted(map(str, kinds))}")
            values = [None] * n
            for members in self._groups(requests[0].group, n):
                for rank, value in zip(members, self._serve([requests[r] for r in members])):
                    values[rank] = value

    def _groups(self, group: str, n: int) -> list:
        """The ranks of each group of the exchange, each in rank order."""
        if group == "flat":
            return [list(range(n))]
        size = self.local_size
        if size is None or n % size:
            raise RuntimeError(
                f"efcomm: a {group!r} exchange needs a hierarchy that divides {n} ranks (local_size={size})"
            )
        if group == "intra":
            return [list(range(node * size, (node + 1) * size)) for node in range(n // size)]
        return [list(range(local, n, size)) for local in range(size)]

    @staticmethod
    def _serve(requests: list) -> list:
        first = requests[0]
        if isinstance(first, AllGather):
            gathered = torch.stack([r.message for r in requests])
            return [gathered] * len(requests)  # every worker only reads it
        if isinstance(first, AllReduceSum):
            total = _sum([r.tensor for r in requests])
            for r in requests:
                r.tensor.copy_(total)
            return [r.tensor for r in requests]
        if isinstance(first, GatherChoices):
            choices = [r.values.tolist() for r in requests]
            return [choices] * len(requests)
        if isinstance(first, Broadcasts):
            # the i-th broadcast carries sender senders[i]'s own row
            rows = [requests[rank].rows[i] for i, rank in enumerate(first.senders)]
            return [rows] * len(requests)
        if isinstance(first, ReduceScatter):
            return list(_sum([r.tensor for r in requests]).chunk(len(requests)))
        if isinstance(first, AllGatherShards):
            full = torch.cat([r.shard for r in requests])
            return [full.clone() for _ in requests]
        if isinstance(first, AllToAll):
            return [torch.stack([r.messages[rank] for r in requests]) for rank in range(len(requests))]
        raise TypeError(f"efcomm: unknown exchange {type(first).__name__}")


def _sum(tensors: list) -> Tensor:
    """The sum in rank order."""
    total = tensors[0].clone()
    for t in tensors[1:]:
        total.add_(t)
    return total
