"""The hierarchical exchange: compressed messages between nodes only.

A flat all-gather of compressed messages costs each rank (n - 1) messages: past about a
hundred ranks it carries more than a dense ring all-reduce. With a hierarchy of N nodes of L
ranks each (``efcomm.register(..., hierarchy=L)``, or ``"auto"`` from torchrun's
LOCAL_WORLD_SIZE), every bucket goes

1. inside the node: a dense reduce-scatter of the bucket (divided by L first), so that
   local rank l owns shard l of the node's mean gradient (NVLink's bandwidth does this);
2. between nodes: local rank l runs the method on its shard with its peers of local rank l
   on the other nodes (one compressed all-gather of N messages, decoded in node order):
   every NIC works in parallel, each with N - 1 peers instead of n - 1;
3. inside the node: an all-gather of the shards' outputs.

Every rank ends with the same bits: the ranks of a node share the shards of step 2, and
the ranks of local rank l compute the same shard from the same messages and state. The
method's state is per shard (each rank keeps its own shard's); its workers are the nodes,
so EF21's h tracks the mean over nodes of the node means, which is the global mean. A bucket
layout change restarts the shards' state (one dense exchange), since shards do not follow
parameters.
"""

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .engine import AllGatherShards, BucketInput, ReduceScatter, Step, bucket_step
from .methods import Worker


@dataclass
class Hierarchy:
    """Nodes of ``local_size`` consecutive ranks (torchrun's layout). ``intra_group`` holds
    this rank's node, ``inter_group`` the ranks of this rank's local rank on every node (in
    node order); both None in the simulator, whose transport forms them itself."""

    local_size: int
    intra_group: Optional[dist.ProcessGroup] = None
    inter_group: Optional[dist.ProcessGroup] = None

    def check(self, world: int) -> None:
        if not (isinstance(self.local_size, int) and self.local_size >= 1 and world % self.local_size == 0):
            raise ValueError(
                f"efcomm: hierarchy local_size ({self.local_size!r}) must be a positive int that divides the "
                f"world size ({world})"
            )

    def nodes(self, world: int) -> int:
        return world // self.local_size


def make_hierarchy(spec, group: Optional[dist.ProcessGroup] = None) -> Optional[Hierarchy]:
    """The hierarchy of ``spec``: None (flat), an int (ranks per node), "auto" (torchrun's
    LOCAL_WORLD_SIZE) or a :class:`Hierarchy`. Creates its process groups: every rank of
    ``group`` must call it, in the same order (``efcomm.register`` does)."""
    if spec is None or isinstance(spec, Hierarchy):
        return spec
    if spec == "auto":
        if "LOCAL_WORLD_SIZE" not in os.environ:
            raise ValueError("efcomm: hierarchy='auto' reads LOCAL_WORLD_SIZE, which torchrun sets; it is not set")
        spec = int(os.environ["LOCAL_WORLD_SIZE"])
    if isinstance(spec, bool) or not isinstance(spec, int):
        raise ValueError(f"efcomm: hierarchy ({spec!r}) must be None, 'auto', an int (ranks per node) or a Hierarchy")
    world = dist.get_world_size(group)
    hierarchy = Hierarchy(spec)
    hierarchy.check(world)
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
    nodes = world // spec
    intra, _ = dist.new_subgroups_by_enumeration([ranks[node * spec : (node + 1) * spec] for node in range(nodes)])
    inter, _ = dist.new_subgroups_by_enumeration([ranks[local::spec] for local in range(spec)])
    hierarchy.intra_group, hierarchy.inter_group = intra, inter
    return hierarchy


def shard_signature(signature: tuple, local: int, local_size: int, shard: int) -> tuple:
    """The layout of a bucket's shard: keys the shard's state (and its random streams)."""
    dtype, numel, params = signature
    return (dtype, shard, (("#shard", (local, local_size, numel)),) + tuple(params))


def agreement_key(signature: tuple) -> tuple:
    """A layout as every rank of a hierarchy knows it: a shard's without its local rank (the
    ranks of a node hold different shards of the same buckets)."""
    dtype, numel, params = signature
    if params and params[0][0] == "#shard":
        _, (local, local_size, full) = params[0]
        return (dtype, numel, (("#shard", (local_size, full)),) + tuple(params[1:]))
    return signature


def _canonical(signature: tuple):
    """The bucket's layout with its parameters sorted by name, and the (offset, numel) of
    each of them in the bucket in that order; None when the order is already so (or the
    parameters are unnamed). DDP rebuilds its buckets in another order after the first
    iteration, and a resumed run starts from the first order again: sharding the sorted
    layout makes a shard's entries depend only on which parameters the bucket holds."""
    dtype, numel, params = signature
    if not params or not all(name for name, _ in params) or list(params) == sorted(params):
        return signature, None
    offsets, offset = {}, 0
    for name, shape in params:
        offsets[name] = (offset, math.prod(shape))
        offset += math.prod(shape)
    ordered = tuple(sorted(params))
    return (dtype, numel, ordered), [offsets[name] for name, _ in ordered]


def hierarchical_step(state, bucket: BucketInput, local_size: int) -> Step:
    """One bucket's step through a hierarchy (steps 1 to 3 above) on this rank."""
    g, worker = bucket.g, bucket.worker
    numel = g.numel()
    signature, order = _canonical(bucket.signature)
    shard = math.ceil(numel / local_size)
    padded = torch.zeros(shard * local_size, dtype=g.dtype, device=g.device)
    if order is None:
        padded[:numel].copy_(g)
    else:
        torch.cat([g[o : o + n] for o, n in order], out=padded[:numel])
    padded.div_(local_size)  # the node's mean, summed in the reduce-scatter
    es = g.element_size()
    state.stats.record_group("intra", padded.numel() * es + shard * es)
    piece = yield ReduceScatter(padded, group="intra")
    node, local = divmod(worker.rank, local_size)
    inner = bucket_step(
        state,
        BucketInput(
            piece,
            shard_signature(signature, local, local_size, shard),
            Worker(node, worker.world // local_size),
            bucket.dense_bytes,
            bucket.last,
            group="inter",
        ),
    )
    out = yield from _between_nodes(inner)
    full = yield AllGatherShards(out.contiguous(), group="intra")
    if order is None:
        return full[:numel]
    result = torch.empty_like(g)
    position = 0
    for o, n in order:
        result[o : o + n].copy_(full[position : position + n])
        position += n
    return result


def _between_nodes(inner: Step) -> Step:
    """The method's step on a shard, its exchanges among the nodes (none of them final)."""
    value = None
    while True:
        try:
            request = inner.send(value)
        except StopIteration as done:
            return done.value
        request.final, request.group = False, "inter"
        value = yield request
