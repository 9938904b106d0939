"""n ranks in one process: each with its own EFState, stepping buckets through the engine's
step with the in-process transport. The simulator runs its workers this way, and the tests
check the step logic (every method, resume, layout changes, non-finite steps) this way
without starting processes: it is the hook's step, minus DDP."""

from typing import Optional

import torch

from .engine import BucketInput, bucket_step
from .hierarchy import Hierarchy, hierarchical_step
from .methods import Worker
from .state import EFState
from .transport import InProcessTransport


def flat_signature(numel: int, dtype: torch.dtype, name: str = "x") -> tuple:
    """The layout of a bucket that holds one named 1-D parameter of ``numel`` entries."""
    return (str(dtype), numel, ((name, (numel,)),))


class Cluster:
    """``states[i]`` is rank i's state; every call steps one bucket on every rank."""

    def __init__(self, states: list) -> None:
        if not states or not all(isinstance(s, EFState) for s in states):
            raise ValueError(f"Cluster: states ({states!r}) must be a non-empty list of EFState")
        configs = {repr(s.config()) for s in states}
        if len(configs) != 1:
            raise ValueError(f"Cluster: the ranks' configurations differ: {sorted(configs)}")
        if states[0].hierarchy is not None:
            states[0].hierarchy.check(len(states))
        else:
            for s in states:
                s.method_impl.check_world(len(states))
        self.states = states
        hierarchy = states[0].hierarchy
        self.local_size = None if hierarchy is None else hierarchy.local_size
        self.transport = InProcessTransport(self.local_size)

    @classmethod
    def create(cls, world: int, method="ef21", compressor=None, **options) -> "Cluster":
        """``world`` ranks of one configuration; ``hierarchy=L``: nodes of L ranks."""
        local_size = options.pop("hierarchy", None)
        return cls(
            [
                EFState(method, compressor, hierarchy=None if local_size is None else Hierarchy(local_size), **options)
                for _ in range(world)
            ]
        )

    @property
    def world(self) -> int:
        return len(self.states)

    def step_bucket(self, grads: list, signature: Optional[tuple] = None, last: bool = True) -> list:
        """One step of one bucket: ``grads[i]`` is rank i's gradient of the bucket (1-D, in the
        state dtype; it may be modified, as DDP's bucket is). Returns every rank's output."""
        if len(grads) != self.world:
            raise ValueError(f"Cluster: {len(grads)} gradients for {self.world} ranks")
        if not all(s._config_checked for s in self.states):
            summaries = [s.agreement_summary() for s in self.states]
            for rank, s in enumerate(self.states):
                s.join_group(self.world, rank, summaries)
        if signature is None:
            signature = flat_signature(grads[0].numel(), grads[0].dtype)
        steps = []
        for rank, (state, g) in enumerate(zip(self.states, grads)):
            bucket = BucketInput(g, signature, Worker(rank, self.world), g.numel() * g.element_size(), last)
            steps.append(
                bucket_step(state, bucket)
                if self.local_size is None
                else hierarchical_step(state, bucket, self.local_size)
            )
        return self.transport.run(steps)

    def step(self, buckets: list) -> list:
        """One training step over several buckets, in order: ``buckets`` is a list of
        (signature, [gradient of rank i]); returns, per bucket, every rank's output."""
        return [
            self.step_bucket(grads, signature, last=(b == len(buckets) - 1))
            for b, (signature, grads) in enumerate(buckets)
        ]

    def bytes_sent(self) -> list:
        return [s.stats.bytes_sent for s in self.states]


def outputs_identical(outs: list) -> bool:
    """Whether every rank's output is the same bits (the hook's contract)."""
    return all(torch.equal(o, outs[0]) for o in outs[1:])
