"""The step engine: one bucket's step on one rank, for the DDP hook and the simulator alike.

A step is a generator. It runs the method's ops (efcomm.methods) on this rank's state and
yields the exchanges it needs, as the requests below; a transport (efcomm.transport) carries
them out and sends back their results: the DDP transport with collectives on a process
group, the in-process transport by stacking the messages of n workers held in one process.
The generator returns the bucket's output (the direction the optimizer steps along), so the
hook and the simulator run the very same step.

Per bucket and step, on rank i (EF21; Richtarik, Sokolov, Fatkhullin 2021, arXiv 2106.05203):

    message = method.encode(g_i, state_i, codec)     c_i = C(g_i - h_i); h_i += c_i
    yield AllGather(message)                         the fixed-size messages of every rank
    out = method.decode(state_i, gathered, codec)    h += (1/n) sum_j c_j (rank order); out = h

Methods with a dense start (EF21) begin each bucket with an all-reduce of the gradients;
lazy methods (LAG, CLAG, AdaCGD) exchange one choice per rank, then the senders' messages.
A compressed reduce-scatter (FSDP2's, efcomm.fsdp) is :func:`scatter_step`: every rank runs the
method on every row of the input, one all-to-all, and each rank decodes its own row.
How states follow bucket layouts (DDP's rebuild, a resumed run) is in efcomm.bucket_state.

Every exchange a step yields depends only on the bucket's size and the configuration, or on
values every rank has alike (the gathered choices), never on this rank's data: ranks that
run out of data under DDP's Join still take part in every collective.
"""

import weakref
from dataclasses import dataclass
from typing import Generator, Optional

import torch
from torch import Tensor

from .bucket_state import BucketState, DeviceFlag, covering_states, nonfinite, relayout
from .methods import Worker

# ---- the exchanges a step asks for ------------------------------------------------------


# Every exchange names its group: "flat" (the state's whole process group), or, with a
# hierarchy (efcomm.hierarchy), "intra" (the ranks of this node) or "inter" (the ranks of
# the other nodes with this rank's local rank).


@dataclass
class AllGather:
    """Every rank's fixed-size uint8 message; the result is a [world, nbytes] uint8 tensor
    whose rows are the messages in rank order."""

    message: Tensor
    final: bool = True
    group: str = "flat"


@dataclass
class AllReduceSum:
    """The sum over ranks of ``tensor``, written into ``tensor`` (the result). Callers divide
    by the world size first, so that narrow dtypes do not overflow."""

    tensor: Tensor
    final: bool = True
    group: str = "flat"


@dataclass
class GatherChoices:
    """Every rank's int32 ``values`` (one per segment), read on the host: the result is a
    list over ranks of lists of ints, the same on every rank."""

    values: Tensor
    final: bool = False
    group: str = "flat"


@dataclass
class Broadcasts:
    """One message from each sender, in rank order: ``rows[s]`` is this rank's own message
    when ``senders[s]`` is this rank, else a buffer of the sender's message size that the
    exchange fills. The result is ``rows``."""

    senders: list
    rows: list
    final: bool = True
    group: str = "flat"


@dataclass
class ReduceScatter:
    """The sum over ranks of ``tensor`` (world * shard entries), cut in world shards: the
    result is this rank's shard (its rank's slice of the sum)."""

    tensor: Tensor
    final: bool = False
    group: str = "flat"


@dataclass
class AllGatherShards:
    """Every rank's ``shard``, concatenated in rank order (the result)."""

    shard: Tensor
    final: bool = True
    group: str = "flat"


@dataclass
class AllToAll:
    """Every rank's fixed-size uint8 message for every rank: ``messages`` is [world, nbytes],
    row j for rank j; the result is [world, nbytes], row i the message rank i sent to this one."""

    messages: Tensor
    final: bool = True
    group: str = "flat"


Step = Generator[object, object, Tensor]


@dataclass(frozen=True)
class BucketInput:
    """One bucket of one rank at one step."""

    g: Tensor  # the bucket's gradient in the state's dtype (DDP: the bucket, or a copy)
    signature: tuple  # its layout (efcomm.bucket_state)
    worker: Worker
    dense_bytes: int  # what DDP's own all-reduce of the bucket would send
    last: bool  # the last bucket of the step
    group: str = "flat"  # the group its exchanges go over (the statistics count bytes by group)


# ---- the step -----------------------------------------------------------------------------


def bucket_step(state, bucket: BucketInput) -> Step:
    """One step of a bucket on one rank (``state``: this rank's efcomm.state.EFState)."""
    if state.stats.steps < state.dense_steps or not state.compresses(bucket.g.numel(), bucket.g.dtype):
        return (yield from _dense_mean(state, bucket))
    method = state.method_impl
    signature = bucket.signature
    current = state.buckets.get(signature)
    if current is not None and current.poisoned():
        # The last step's aggregate held inf/NaN (e.g. an AMP overflow step, which GradScaler
        # skips): the state is poisoned on some ranks, so every rank starts this bucket over.
        del state.buckets[signature]
        state.stats.record_nonfinite_reset()
        current = None
    if current is None:
        sources = [b for sig, b in state.buckets.items() if sig not in state._created]
        segments = covering_states(sources, signature)
        if segments is not None and not any(s.poisoned() for s in segments):
            return (yield from _step_segments(state, segments, bucket))
        current = relayout(sources, signature, bucket.g.device)
        if current is None and method.dense_init:
            return (yield from _initialise(state, bucket))
        if current is None:
            current = BucketState(signature, method.init_state(bucket.g, None, bucket.worker))
        else:
            state.stats.relayouts += 1
        state.buckets[signature] = current
        state._created.add(signature)
    return (yield from _step_segments(state, [current], bucket))


def _step_segments(state, segments: list, bucket: BucketInput) -> Step:
    if state.method_impl.lazy:
        return (yield from _lazy_step(state, segments, bucket))
    return (yield from _compressed_step(state, segments, bucket))


def _segment_inputs(segments: list, bucket: BucketInput):
    """The bucket's gradient cut into its segments (the bucket itself in the common case),
    and the parameter slices of the bucket (None in the common case)."""
    g = bucket.g
    if len(segments) == 1 and segments[0].signature == bucket.signature:
        return [g], None
    slices = BucketState(bucket.signature, {}).param_slices()
    return [torch.cat([g[o : o + n] for o, n in (slices[p] for p in s.params)]) for s in segments], slices


def _assemble(bucket: BucketInput, segments: list, outs: list, slices) -> Tensor:
    """The bucket's output from its segments' outputs (the one output in the common case)."""
    if slices is None:
        return outs[0]
    full = torch.empty_like(bucket.g)
    for segment, out in zip(segments, outs):
        for o, n in (slices[p] for p in segment.params):
            full[o : o + n].copy_(out[:n])
            out = out[n:]
    return full


def _begin(state, segment: BucketState, g_segment: Tensor, worker: Worker):
    """The codec of a segment's step (keys its random streams by the segment's step count)."""
    segment.move_to(g_segment.device)
    codec = state.codec(segment, g_segment.numel(), g_segment.dtype, worker.rank, g_segment.device)
    segment.steps += 1
    state._touched.add(segment.signature)
    return codec


def _compressed_step(state, segments: list, bucket: BucketInput) -> Step:
    """One compressed step of a bucket made of one or more state layouts ("segments"): each
    segment encodes its slice of the bucket, the messages go out in one all-gather, and each
    segment decodes its part."""
    method, worker = state.method_impl, bucket.worker
    inputs, slices = _segment_inputs(segments, bucket)
    codecs, messages = [], []
    for segment, g_segment in zip(segments, inputs):
        codecs.append(_begin(state, segment, g_segment, worker))
        messages.append(method.encode(g_segment, segment.tensors, codecs[-1], worker))
    message = messages[0] if len(messages) == 1 else torch.cat(messages)
    state.stats.record(message.numel(), bucket.dense_bytes, bucket.last, bucket.group)
    state.end_step_if_last(bucket.last)
    rows = yield AllGather(message)
    outs, offset = [], 0
    for segment, g_segment, part, codec in zip(segments, inputs, messages, codecs):
        segment_rows = rows if len(segments) == 1 else rows[:, offset : offset + part.numel()].contiguous()
        offset += part.numel()
        flag = _messages_nonfinite(method, segment_rows, codec)
        out = method.decode(segment.tensors, segment_rows, codec, g_segment, worker)
        segment.nonfinite = nonfinite(out) if flag is None else flag
        outs.append(out)
    return _assemble(bucket, segments, outs, slices)


# Workers of one process that decode the same gathered tensor one after another (the
# in-process transport hands every worker the same one) share its check: the last one.
_last_checked = (lambda: None, None)  # (weak reference to the rows, their flag), swapped whole


def _messages_nonfinite(method, rows: Tensor, codec) -> Optional[DeviceFlag]:
    """Whether the gathered messages carry inf/NaN, read from the small part of them that
    shows it (their values or block headers); None when the compressor has no such part
    (the caller checks the decoded result instead)."""
    global _last_checked
    checked_rows, flag = _last_checked
    if checked_rows() is not rows:
        found = method.nonfinite_in(rows, codec)
        flag = None if found is None else DeviceFlag(found)
        _last_checked = (weakref.ref(rows), flag)
    return flag


def _lazy_step(state, segments: list, bucket: BucketInput) -> Step:
    """One step of a lazy method (LAG, CLAG, AdaCGD) on one or more state layouts: a gather
    of one choice per rank and segment (0: silent), read on the host, then one broadcast per
    sending rank and segment; the others send nothing."""
    method, worker = state.method_impl, bucket.worker
    inputs, slices = _segment_inputs(segments, bucket)
    codecs, mine = [], []
    for segment, g_segment in zip(segments, inputs):
        codecs.append(_begin(state, segment, g_segment, worker))
        mine.append(method.choose(g_segment, segment.tensors, codecs[-1]).to(torch.int32).reshape(1))
    own_choices = torch.cat(mine)
    choices = yield GatherChoices(own_choices)  # choices[rank][segment], the same on every rank
    sent_bytes = own_choices.numel() * own_choices.element_size()
    senders, rows = [], []
    plans = []  # per segment: (position of its first sender in the broadcasts, its senders)
    for s, (segment, g_segment, codec) in enumerate(zip(segments, inputs, codecs)):
        own = choices[worker.rank][s]
        message = method.encode_choice(g_segment, segment.tensors, own, codec, worker) if own else None
        method.remember(g_segment, segment.tensors)
        segment_senders = [rank for rank in range(worker.world) if choices[rank][s]]
        plans.append((len(rows), segment_senders))
        for rank in segment_senders:
            size = method.message_nbytes(choices[rank][s], codec)
            if rank == worker.rank:
                sent_bytes += size
            senders.append(rank)
            rows.append(
                message if rank == worker.rank else torch.empty(size, dtype=torch.uint8, device=bucket.g.device)
            )
    state.stats.record(sent_bytes, bucket.dense_bytes, bucket.last, bucket.group)
    state.end_step_if_last(bucket.last)
    if senders:
        rows = yield Broadcasts(senders, rows)
    outs = []
    for s, (segment, codec, (first, segment_senders)) in enumerate(zip(segments, codecs, plans)):
        if segment_senders:
            segment_rows = rows[first : first + len(segment_senders)]
            segment_choices = [choices[rank][s] for rank in segment_senders]
            out = method.decode_senders(segment.tensors, segment_rows, segment_choices, codec, worker)
        else:  # nobody moved: h stays
            out = segment.tensors["h"]
        segment.nonfinite = nonfinite(out)
        outs.append(out)
    return _assemble(bucket, segments, outs, slices)


def _initialise(state, bucket: BucketInput) -> Step:
    """The dense exchange that starts a method on a bucket (EF21: h_i = g_i, h = mean_j g_j)."""
    g, worker = bucket.g, bucket.worker
    h = g.detach().clone().div_(worker.world)  # divide before summing: no overflow in narrow dtypes
    # Registered now, before the exchange, so that the state exists for the rest of this
    # step's buckets; h becomes the mean in place when the all-reduce completes.
    bucket_state = BucketState(bucket.signature, state.method_impl.init_state(g, h, worker))
    state.buckets[bucket.signature] = bucket_state
    state._created.add(bucket.signature)
    state._touched.add(bucket.signature)
    state.stats.initialisations += 1
    state.stats.record(h.numel() * h.element_size(), bucket.dense_bytes, bucket.last, bucket.group)
    state.end_step_if_last(bucket.last)
    h = yield AllReduceSum(h)
    bucket_state.nonfinite = nonfinite(h)
    return h


def _dense_mean(state, bucket: BucketInput) -> Step:
    """Plain averaging for buckets too small to compress (in place on the bucket, as
    PyTorch's allreduce_hook does)."""
    reduced = bucket.g.div_(bucket.worker.world)
    state.stats.record(reduced.numel() * reduced.element_size(), bucket.dense_bytes, bucket.last, bucket.group)
    state.end_step_if_last(bucket.last)
    return (yield AllReduceSum(reduced))


def row_signature(signature: tuple, row: int, world: int) -> tuple:
    """The layout of row ``row`` of a reduce-scatter's input (see :func:`scatter_step`): the
    same on every rank, so that every rank encodes a row with the owner's random streams."""
    dtype, numel, params = signature
    return (dtype, numel // world, (("#row", (row, world)),) + tuple(params))


def scatter_step(state, bucket: BucketInput) -> Step:
    """A compressed reduce-scatter on one rank: ``bucket.g`` holds one row per rank (row j:
    the entries rank j owns, as FSDP lays out its reduce-scatter input). Each row is a state
    layout of its own (:func:`row_signature`): every rank encodes every row with the method
    (EF21: c_ij = C(g_ij - h_ij); h_ij += c_ij), one all-to-all sends row j's message to rank
    j, and each rank decodes the messages of its own row (h_j += (1/n) sum_i c_ij). Returns
    this rank's row of the mean. A stateful method keeps this rank's error-feedback state of
    every row (the whole bucket) and its aggregate of every row; only its own row's is read.
    Rows too small to compress, the first ``dense_steps`` steps and the dense start are a plain
    reduce-scatter of the mean.

    A stateful method's step ends with an all-reduce of one flag (4 bytes): whether any rank's
    own row of the aggregate held inf/NaN. Each rank sees only its own row, and every rank's
    state holds every row, so at the next step every rank restarts every row of the bucket
    alike when any row was poisoned (an AMP overflow), as :func:`bucket_step` restarts a bucket."""
    worker = bucket.worker
    method, world, g = state.method_impl, worker.world, bucket.g
    rows = g.view(world, -1)
    shard = rows.shape[1]
    if method.lazy:
        raise ValueError(f"efcomm: a compressed reduce-scatter runs the non-lazy methods only, not {method!r}")
    if state.stats.steps < state.dense_steps or not state.compresses(shard, g.dtype):
        g.div_(world)
        state.stats.record(g.numel() * g.element_size(), bucket.dense_bytes, bucket.last, bucket.group)
        state.end_step_if_last(bucket.last)
        return (yield ReduceScatter(g))
    signatures = [row_signature(bucket.signature, j, world) for j in range(world)]
    segments = [state.buckets.get(sig) for sig in signatures]
    if any(s is not None and s.poisoned() for s in segments):
        for sig in signatures:
            state.buckets.pop(sig, None)
        state.stats.record_nonfinite_reset()
        segments = [None] * world
    if any(s is None for s in segments) and method.dense_init:
        return (yield from _initialise_rows(state, bucket, rows, signatures))
    for j, sig in enumerate(signatures):
        if segments[j] is None:
            segments[j] = state.buckets[sig] = BucketState(sig, method.init_state(rows[j], None, worker))
            state._created.add(sig)
    codecs = [_begin(state, segment, rows[j], worker) for j, segment in enumerate(segments)]
    messages = torch.stack([method.encode(rows[j], segments[j].tensors, codecs[j], worker) for j in range(world)])
    own = segments[worker.rank]
    stateful = bool(own.tensors)
    flag_bytes = _FLAG_BYTES if stateful else 0
    state.stats.record(messages.numel() + flag_bytes, bucket.dense_bytes, bucket.last, bucket.group)
    state.end_step_if_last(bucket.last)
    received = yield AllToAll(messages, final=not stateful)
    out = method.decode(own.tensors, received, codecs[worker.rank], rows[worker.rank], worker)
    if stateful:
        yield from _exchange_nonfinite(segments, out)
    return out


_FLAG_BYTES = 4  # the int32 flag of a compressed reduce-scatter's step (see scatter_step)


def _exchange_nonfinite(segments: list, own_row: Tensor) -> Step:
    """Marks every row's state poisoned, on every rank alike, when any rank's own row of the
    aggregate is non-finite: one all-reduce of an int32 flag, read on the host at the next step."""
    flag = (~torch.isfinite(own_row).all()).to(torch.int32).reshape(1)
    flag = yield AllReduceSum(flag, final=False)
    poisoned = DeviceFlag(flag[0] > 0)
    for segment in segments:
        segment.nonfinite = poisoned


def _initialise_rows(state, bucket: BucketInput, rows: Tensor, signatures: list) -> Step:
    """The dense start of a compressed reduce-scatter: h_ij = g_ij for every row, and the
    owner's aggregate h_j = mean_i g_ij from a plain reduce-scatter."""
    worker = bucket.worker
    states = []
    for j, sig in enumerate(signatures):
        states.append(BucketState(sig, state.method_impl.init_state(rows[j], rows[j].clone(), worker)))
        state.buckets[sig] = states[-1]
        state._created.add(sig)
        state._touched.add(sig)
    state.stats.initialisations += 1
    mean = bucket.g.div(worker.world)
    state.stats.record(mean.numel() * mean.element_size() + _FLAG_BYTES, bucket.dense_bytes, bucket.last, bucket.group)
    state.end_step_if_last(bucket.last)
    out = yield ReduceScatter(mean)
    own = states[worker.rank]
    own.tensors["h"].copy_(out)
    yield from _exchange_nonfinite(states, out)
    return own.tensors["h"]


def run_local(step: Step) -> Optional[Tensor]:
    """Runs a step that asks for no exchange (a helper for tests); returns its output."""
    try:
        request = next(step)
    except StopIteration as done:
        return done.value
    raise RuntimeError(f"efcomm: the step asked for an exchange ({type(request).__name__}) with no transport")
