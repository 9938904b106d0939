"""The DDP communication hook: an error-feedback method with a compressor, one
all-gather per bucket.

Per bucket and step, on every rank (the method's ops are in efcomm.methods; for EF21,
Richtarik, Sokolov, Fatkhullin 2021, arXiv 2106.05203):

    message = method.encode(g_i, state_i, codec)  EF21: c_i = C(g_i - h_i); h_i += c_i
    all_gather_into_tensor of the fixed-size messages
    out = method.decode(state_i, gathered, codec) EF21: h += (1/n) sum_j c_j (rank order); out = h
    the bucket's gradient is out

``codec`` binds the compressor to the bucket and step: its random streams are keyed by the
run's ``seed``, the bucket's step count, a hash of the bucket's signature and (for
stochastic rounding only) the rank, so Rand-k indices agree on every rank and a run is
reproducible.

For methods with a dense start (EF21), the first step of a bucket is one dense all-reduce
that sets h_i = g_i and h = mean_j g_j. How states follow DDP's bucket layouts (its rebuild
after the first iteration, a resumed run) is in efcomm.bucket_state.
"""
import dataclasses
import hashlib
import json
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops
from .bucket_state import BucketState, DeviceFlag, as_signature, covering_states, nonfinite, relayout
from .compressors import Codec, Compressor, Context, TopK
from .methods import Worker, make_method
from .stats import CommStats

_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class EFState:
    """State of :func:`ef_hook`: configuration, per-bucket method state and statistics.

    Args:
        method: the error-feedback method, by name with default parameters (``"ef21"``,
            ``"ef21-sgdm"``, ``"econtrol"``, ``"clip21"``, ``"lag"``, ``"clag"``, ``"adacgd"``,
            ``"ef"``, ``"none"``) or as an
            :class:`efcomm.methods.Method` (``EF21SGDM(eta=0.1)``, ``EF21W(weights)``, ...).
        compressor: an efcomm compressor (default ``TopK(ratio=0.01)``): ``TopK``, ``RandK``,
            ``QSGD``, ``Natural``, ``ScaledSign``, ``Int8``, ``FP8``, ``Identity``,
            ``Induced``, or an unbiased one's ``.scaled()``. ``none`` takes unbiased ones,
            the error-feedback methods contractive ones; a mismatch raises.
        process_group: the group to communicate over (``None``: the default group).
        min_compress_numel: buckets with fewer elements are all-reduced densely, as are
            buckets whose message would not be smaller than the dense buffer (except with
            methods whose messages are dense by design, such as Clip21).
        state_dtype: dtype of the error-feedback state and of the message values; ``None``
            keeps the bucket's dtype (e.g. ``torch.float32`` keeps bf16 models' state in fp32).
        param_names: ``{id(param): name}``, so that bucket layouts are recognised across
            processes (checkpoint/resume); :func:`efcomm.register` fills it in.
        allow_biased: skip the compressor check (e.g. ``none`` with Top-k, to show it diverge).
        seed: keys every random choice (Rand-k indices, stochastic rounding); the same on
            every rank (checked).

    Picklable (the process group and parameter names are dropped: register the unpickled
    state with :func:`efcomm.register` or pass ``param_names`` again), with ``state_dict`` /
    ``load_state_dict``.
    """

    def __init__(
        self,
        method="ef21",
        compressor: Optional[Compressor] = None,
        process_group: Optional[dist.ProcessGroup] = None,
        *,
        min_compress_numel: int = 1024,
        state_dtype: Optional[torch.dtype] = None,
        param_names: Optional[dict] = None,
        allow_biased: bool = False,
        seed: int = 0,
    ) -> None:
        self.method_impl = make_method(method)
        method = self.method_impl.name
        if self.method_impl.per_worker_iterates:
            raise ValueError(
                f"efcomm: method {self.method_impl!r} keeps a different model on every worker, and DDP keeps "
                "one identical model on every rank: run it in efcomm.sim, or use its shared-iterate form "
                "(per_worker=False; see efcomm.methods.MoTEF)"
            )
        compressor = TopK() if compressor is None else compressor
        self.method_impl.check_compressor(compressor, allow_biased)
        if not isinstance(min_compress_numel, int) or min_compress_numel < 1:
            raise ValueError(f"efcomm: min_compress_numel ({min_compress_numel!r}) must be a positive int")
        if state_dtype is not None and state_dtype not in _STATE_DTYPES:
            raise ValueError(f"efcomm: state_dtype ({state_dtype!r}) must be None or one of {_STATE_DTYPES}")
        if not (isinstance(seed, int) and not isinstance(seed, bool) and -(2**63) <= seed < 2**63):
            raise ValueError(f"efcomm: seed ({seed!r}) must be an int that fits 64 bits")
        self.seed = seed
        self.method = method
        self.allow_biased = allow_biased
        self.compressor = compressor
        self.process_group = process_group
        self.min_compress_numel = min_compress_numel
        self.state_dtype = state_dtype
        self.param_names = dict(param_names or {})
        self.buckets: dict[tuple, BucketState] = {}  # by bucket signature
        self.stats = CommStats()
        self._config_checked = False
        self._touched: set = set()  # signatures of the states used in the current step
        self._created: set = set()  # signatures of the states created in the current step

    def config(self) -> dict:
        """The settings every rank must share (checked once, by hash, on the first bucket)."""
        return {
            "method": repr(self.method_impl),
            "compressor": repr(self.compressor),
            "allow_biased": self.allow_biased,
            "min_compress_numel": self.min_compress_numel,
            "state_dtype": str(self.state_dtype),
            "seed": self.seed,
        }

    def state_dict(self) -> dict:
        return {
            "config": self.config(),
            "buckets": [
                {
                    "signature": b.signature,
                    "k": b.k,
                    "steps": b.steps,
                    "tensors": {n: t.clone() for n, t in b.tensors.items()},
                    "hints": {n: t.clone() for n, t in b.hints.items()},
                }
                for b in self.buckets.values()
            ],
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.config():
            raise ValueError(
                f"efcomm: checkpoint configuration {state['config']} differs from this state's {self.config()}"
            )
        self.buckets = {}
        for saved in state["buckets"]:
            signature = as_signature(saved["signature"])
            tensors = {n: t.clone() for n, t in saved["tensors"].items()}
            steps = int(saved.get("steps", 0))
            hints = {n: t.clone() for n, t in saved.get("hints", {}).items()}
            self.buckets[signature] = BucketState(signature, int(saved["k"]), tensors, loaded=True, steps=steps, hints=hints)
        self.stats.load_state_dict(state["stats"])

    def __getstate__(self) -> dict:
        # Drop what belongs to this process: the group, parameter identities (id() keys) and
        # the agreement check, which the process that unpickles must run again.
        state = dict(self.__dict__)
        state.update(process_group=None, param_names={}, _config_checked=False, _touched=set(), _created=set())
        state["buckets"] = {sig: dataclasses.replace(b, nonfinite=None) for sig, b in self.buckets.items()}
        return state

    def bucket_signature(self, bucket: dist.GradBucket, dtype: torch.dtype) -> tuple:
        """What identifies a bucket layout: dtype, size and its parameters in order."""
        params = tuple((self.param_names.get(id(p), ""), tuple(p.shape)) for p in bucket.parameters())
        return (str(dtype), bucket.buffer().numel(), params)

    def codec(self, bucket_state: BucketState, numel: int, dtype: torch.dtype, rank: int, device: torch.device) -> Codec:
        """The compressor bound to a state layout at its current step (with the layout's
        threshold Top-k hint when the compressor uses one)."""
        hint = None
        if getattr(self.compressor, "threshold", False) is True:
            hint = bucket_state.hints.get("topk_threshold")
            hint = ops.topk_threshold_hint(device) if hint is None else hint.to(device)
            bucket_state.hints["topk_threshold"] = hint
        ctx = Context(self.seed, bucket_state.steps, bucket_state.layout_id, rank)
        return Codec(self.compressor, numel, dtype, ctx, hint)

    def check_config_agreement(self, device: torch.device) -> None:
        """All-gathers a hash of :meth:`config` and raises if any rank differs."""
        text = json.dumps(self.config(), sort_keys=True)
        digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)
        world = dist.get_world_size(self.process_group)
        hashes = torch.empty(world, dtype=torch.int64, device=device)
        dist.all_gather_into_tensor(
            hashes, torch.tensor([digest], dtype=torch.int64, device=device), group=self.process_group
        )
        values = hashes.tolist()
        differing = [rank for rank, value in enumerate(values) if value != values[0]]
        if differing:
            raise RuntimeError(
                f"efcomm: ranks disagree on the hook configuration: ranks {differing} differ from rank 0; "
                f"rank {dist.get_rank(self.process_group)} has {text}"
            )
        self._config_checked = True


def ef_hook(state: EFState, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook: register with ``ddp_model.register_comm_hook(state, ef_hook)``."""
    group = state.process_group
    world = dist.get_world_size(group)
    worker = Worker(dist.get_rank(group), world)
    buffer = bucket.buffer()
    if not state._config_checked:
        state.method_impl.check_world(world)
        state.check_config_agreement(buffer.device)
    dtype = state.state_dtype or buffer.dtype
    g = buffer if dtype == buffer.dtype else buffer.to(dtype)
    numel = buffer.numel()
    dense_bytes = numel * buffer.element_size()
    last = bucket.is_last()
    k = state.method_impl.k_for(state.compressor, numel)
    wire = state.method_impl.wire_nbytes(Codec(state.compressor, numel, dtype))
    smaller = state.method_impl.sends_dense or wire < numel * g.element_size()
    compress = numel >= state.min_compress_numel and smaller
    if not compress:
        return _dense_mean(state, buffer, g, world, dense_bytes, last)

    signature = state.bucket_signature(bucket, dtype)
    current = state.buckets.get(signature)
    if current is not None and current.poisoned():
        # The last step's aggregate held inf/NaN (e.g. an AMP overflow step, which GradScaler
        # skips): the state is poisoned on some ranks, so every rank starts this bucket over.
        del state.buckets[signature]
        state.stats.nonfinite_resets += 1
        current = None
    if current is None:
        sources = [b for sig, b in state.buckets.items() if sig not in state._created]
        segments = covering_states(sources, signature)
        if segments is not None and not any(s.poisoned() for s in segments):
            step = _lazy_step if state.method_impl.lazy else _segmented_step
            return step(state, segments, signature, buffer, g, worker, dense_bytes, last)
        current = relayout(sources, signature, k, buffer.device)
        if current is None and state.method_impl.dense_init:
            return _initialise(state, signature, k, buffer, g, worker, dense_bytes, last)
        if current is None:
            current = BucketState(signature, k, state.method_impl.init_state(g, None, worker))
        else:
            state.stats.relayouts += 1
        state.buckets[signature] = current
        state._created.add(signature)
    step = _lazy_step if state.method_impl.lazy else _segmented_step
    return step(state, [current], signature, buffer, g, worker, dense_bytes, last)


def _segment_inputs(segments, signature, g):
    """The bucket's gradient cut into its segments (the bucket itself in the common case),
    and the parameter slices of the bucket (None in the common case)."""
    if len(segments) == 1 and segments[0].signature == signature:
        return [g], None
    slices = BucketState(signature, 0, {}).param_slices()
    return [torch.cat([g[o : o + n] for o, n in (slices[p] for p in s.params)]) for s in segments], slices


def _write_back(buffer, segment, out, slices) -> None:
    """Writes a segment's result into its parameters' places in the bucket."""
    if slices is None:
        buffer.copy_(out)
        return
    for o, n in (slices[p] for p in segment.params):
        buffer[o : o + n].copy_(out[:n])
        out = out[n:]


def _segmented_step(state, segments, signature, buffer, g, worker, dense_bytes, last):
    """One compressed step of a bucket made of one or more state layouts ("segments"):
    each segment encodes its slice of the bucket, the messages go out in one all-gather,
    each segment decodes its part and its result is written back to the bucket."""
    method = state.method_impl
    world = worker.world
    inputs, slices = _segment_inputs(segments, signature, g)
    messages, codecs = [], []
    for segment, g_segment in zip(segments, inputs):
        segment.tensors = {n: t.to(buffer.device) for n, t in segment.tensors.items()}
        codecs.append(state.codec(segment, g_segment.numel(), g_segment.dtype, worker.rank, buffer.device))
        segment.steps += 1
        messages.append(method.encode(g_segment, segment.tensors, codecs[-1], worker))
        state._touched.add(segment.signature)
    message = messages[0] if len(messages) == 1 else torch.cat(messages)
    gathered = message.new_empty((world * message.numel(),))  # flat: gloo splits it by rank
    work = dist.all_gather_into_tensor(gathered, message, group=state.process_group, async_op=True)
    state.stats.record(message.numel(), dense_bytes, last)
    _end_step_if_last(state, last)

    def decode(fut: torch.futures.Future) -> Tensor:
        fut.value()
        rows = gathered.view(world, -1)
        offset = 0
        for segment, g_segment, part, codec in zip(segments, inputs, messages, codecs):
            segment_rows = rows[:, offset : offset + part.numel()]
            offset += part.numel()
            if len(segments) > 1:
                segment_rows = segment_rows.contiguous()
            # The small part of the messages that shows inf/NaN (their values or block
            # headers); the decoded result only when the compressor has no such part.
            flag = method.nonfinite_in(segment_rows, codec)
            out = method.decode(segment.tensors, segment_rows, codec, g_segment, worker)
            segment.nonfinite = nonfinite(out) if flag is None else DeviceFlag(flag)
            _write_back(buffer, segment, out, slices)
        return buffer

    return work.get_future().then(decode)


def _lazy_step(state, segments, signature, buffer, g, worker, dense_bytes, last):
    """One step of a lazy method (LAG, CLAG, AdaCGD) on one or more state layouts: an
    all-gather of one choice per rank and segment (0: silent), then one broadcast per
    sending rank and segment; the others send nothing."""
    method, group, world = state.method_impl, state.process_group, worker.world
    inputs, slices = _segment_inputs(segments, signature, g)
    nseg = len(segments)
    codecs, mine = [], []
    for segment, g_segment in zip(segments, inputs):
        segment.tensors = {n: t.to(buffer.device) for n, t in segment.tensors.items()}
        codecs.append(state.codec(segment, g_segment.numel(), g_segment.dtype, worker.rank, buffer.device))
        segment.steps += 1
        mine.append(method.choose(g_segment, segment.tensors, codecs[-1]).to(torch.int32).reshape(1))
        state._touched.add(segment.signature)
    choice_t = torch.cat(mine)
    choices_t = torch.empty(world * nseg, dtype=torch.int32, device=buffer.device)
    dist.all_gather_into_tensor(choices_t, choice_t, group=group)
    choices = choices_t.view(world, nseg).tolist()  # the same on every rank
    sent_bytes = choice_t.numel() * choice_t.element_size()
    plans = []  # per segment: (senders, rows)
    works = []
    for s, (segment, g_segment, codec) in enumerate(zip(segments, inputs, codecs)):
        own = choices[worker.rank][s]
        message = method.encode_choice(g_segment, segment.tensors, own, codec, worker) if own else None
        method.remember(g_segment, segment.tensors)
        senders = [rank for rank in range(world) if choices[rank][s]]
        sizes = {rank: method.message_nbytes(choices[rank][s], codec) for rank in senders}
        if own:
            sent_bytes += sizes[worker.rank]
        rows = [
            message if rank == worker.rank else torch.empty(sizes[rank], dtype=torch.uint8, device=buffer.device)
            for rank in senders
        ]
        works += [dist.broadcast(row, group=group, group_src=rank, async_op=True) for rank, row in zip(senders, rows)]
        plans.append((senders, rows))
    state.stats.record(sent_bytes, dense_bytes, last)
    _end_step_if_last(state, last)

    def decode(fut: Optional[torch.futures.Future]) -> Tensor:
        if fut is not None:
            for done in fut.value():
                done.value()
        for s, (segment, codec, (senders, rows)) in enumerate(zip(segments, codecs, plans)):
            if senders:
                segment_choices = [choices[rank][s] for rank in senders]
                out = method.decode_senders(segment.tensors, rows, segment_choices, codec, worker)
            else:  # nobody moved: h stays
                out = segment.tensors["h"]
            segment.nonfinite = nonfinite(out)
            _write_back(buffer, segment, out, slices)
        return buffer

    if not works:
        done = torch.futures.Future(devices=[buffer.device] if buffer.is_cuda else None)
        done.set_result(decode(None))
        return done
    return torch.futures.collect_all([w.get_future() for w in works]).then(decode)


def _initialise(state, signature, k, buffer, g, worker, dense_bytes, last):
    """Dense exchange that starts a method on a bucket (EF21: h_i = g_i, h = mean_j g_j)."""
    h = g.detach().clone().div_(worker.world)  # divide before summing: no overflow in narrow dtypes
    bucket_state = BucketState(signature, k, state.method_impl.init_state(g, h, worker))
    state.buckets[signature] = bucket_state
    state._created.add(signature)
    state._touched.add(signature)
    state.stats.initialisations += 1
    work = dist.all_reduce(h, group=state.process_group, async_op=True)
    state.stats.record(h.numel() * h.element_size(), dense_bytes, last)
    _end_step_if_last(state, last)

    def finish(fut: torch.futures.Future) -> Tensor:
        fut.value()
        bucket_state.nonfinite = nonfinite(h)
        buffer.copy_(h)
        return buffer

    return work.get_future().then(finish)


def _dense_mean(state, buffer, g, world, dense_bytes, last):
    """Plain averaging for buckets too small to compress."""
    reduced = g.div_(world)  # in place on the bucket, as PyTorch's allreduce_hook does
    work = dist.all_reduce(reduced, group=state.process_group, async_op=True)
    state.stats.record(reduced.numel() * reduced.element_size(), dense_bytes, last)
    _end_step_if_last(state, last)

    def finish(fut: torch.futures.Future) -> Tensor:
        fut.value()
        buffer.copy_(reduced)
        return buffer

    return work.get_future().then(finish)


def _end_step_if_last(state: EFState, last: bool) -> None:
    """At the end of a step, drops the states of layouts that DDP no longer has."""
    if last:
        for signature in [sig for sig in state.buckets if sig not in state._touched]:
            del state.buckets[signature]
        state._touched.clear()
        state._created.clear()


def register(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    method: str = "ef21",
    compressor: Optional[Compressor] = None,
    process_group: Optional[dist.ProcessGroup] = None,
    **options,
) -> EFState:
    """Creates an :class:`EFState` for ``ddp_model`` and registers :func:`ef_hook` on it.

    ``options`` are passed to :class:`EFState` (``min_compress_numel``, ``state_dtype``,
    ``allow_biased``, ``seed``).
    DDP's own ``mixed_precision`` (which installs a hook of its own) is rejected.
    """
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(f"efcomm.register: ddp_model must be a DistributedDataParallel; got {type(ddp_model).__name__}")
    if getattr(ddp_model, "mixed_precision", None) is not None:
        raise ValueError("efcomm.register: DDP's mixed_precision installs its own hook; use state_dtype instead")
    if getattr(ddp_model, "_use_python_reducer", False):
        raise ValueError("efcomm.register: the compiled python-reducer mode of DDP is not supported")
    names = {id(p): name for name, p in ddp_model.module.named_parameters()}
    state = EFState(
        method,
        compressor,
        process_group if process_group is not None else ddp_model.process_group,
        param_names=names,
        **options,
    )
    ddp_model.register_comm_hook(state, ef_hook)
    return state
