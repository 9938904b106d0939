"""EFState: one rank's configuration, per-bucket method state, statistics and checkpoints.

The DDP hook (efcomm.hook) keeps one per rank; the simulator (efcomm.sim) one per simulated
worker. Both drive it through the step engine (efcomm.engine).
"""

import dataclasses
import json
from typing import Optional

import torch
import torch.distributed as dist

from .bucket_state import BucketState, as_signature
from .compressors import Codec, Compressor, Context, TopK
from .hierarchy import Hierarchy, agreement_key
from .methods import make_method
from .stats import CommStats

_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# What efcomm.register(ddp) and EFState() use when not told otherwise: classic error feedback
# with Top-1% in the compact message (bf16 values, 16-bit offsets: about 1% of the dense
# all-reduce's bytes). The evidence (loss at equal bytes on real text, against EF21, EF21-SGDM,
# PowerSGD and dense training, with AdamW and SGD): docs/convergence.md.
DEFAULT_METHOD = "ef"


def default_compressor() -> Compressor:
    return TopK(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)


class EFState:
    """State of :func:`efcomm.ef_hook`: configuration, per-bucket method state and statistics.

    Args:
        method: the error-feedback method (default ``"ef"``), by name with default parameters (``"ef21"``,
            ``"ef21-sgdm"``, ``"econtrol"``, ``"clip21"``, ``"lag"``, ``"clag"``, ``"adacgd"``,
            ``"ef"``, ``"none"``, ``"motef"``) or as an :class:`efcomm.methods.Method`
            (``EF21SGDM(eta=0.1)``, ``EF21W(weights)``, ...).
        compressor: an efcomm compressor (default ``TopK(ratio=0.01, value_dtype=torch.bfloat16,
            index_bits=16)``, :func:`default_compressor`): ``TopK``, ``ChunkTopK``, ``RandK``,
            ``QSGD``, ``Natural``, ``ScaledSign``, ``Int8``, ``FP8``, ``Identity``,
            ``Induced``, or an unbiased one's ``.scaled()``. ``none`` takes unbiased ones,
            the error-feedback methods contractive ones (``ef`` also those of bounded error, as
            ``ChunkTopK``); a mismatch raises.
        process_group: the group to communicate over (``None``: the default group).
        min_compress_numel: buckets with fewer elements are all-reduced densely, as are
            buckets whose message would not be smaller than the dense buffer (except with
            methods whose messages are dense by design, such as Clip21).
        state_dtype: dtype of the error-feedback state and of the message values; ``None``
            keeps the bucket's dtype (e.g. ``torch.float32`` keeps bf16 models' state in fp32).
        param_names: ``{id(param): name}``, so that bucket layouts are recognised across
            processes (checkpoint/resume); :func:`efcomm.register` fills it in.
        allow_biased: skip the compressor check (e.g. ``none`` with Top-k, to show it diverge).
        always_compress: compress every bucket of at least ``min_compress_numel`` entries, even
            where the message is not smaller than the dense buffer (the simulator does, to study
            a compressor on small problems).
        seed: keys every random choice (Rand-k indices, stochastic rounding); the same on
            every rank (checked).
        hierarchy: None (one flat exchange over the group), or an
            :class:`efcomm.hierarchy.Hierarchy` (compressed messages between nodes only; see
            efcomm.hierarchy; ``efcomm.register`` builds it from ``hierarchy=L`` or "auto").
        dense_steps: the first ``dense_steps`` steps (counted in ``stats.steps``) are DDP's
            plain all-reduce, as PowerSGD's ``start_powerSGD_iter``; the method starts after.
        sparsity_warmup: DGC's warm-up (Lin et al. 2018, arXiv 1712.01887): over a bucket's
            first ``sparsity_warmup`` compressed steps the kept fraction falls geometrically from
            ``warmup_start`` to the compressor's ``ratio`` (step t keeps
            ``warmup_start * (ratio / warmup_start) ** (t / sparsity_warmup)``); the larger
            messages are sent and counted as such. Needs a compressor with a ``ratio`` and no
            ``k`` (TopK, RandK, ChunkTopK).
        warmup_start: the kept fraction at the warm-up's first step (default 0.25, DGC's).

    Picklable (the process group and parameter names are dropped: register the unpickled
    state with :func:`efcomm.register` or pass ``param_names`` again), with ``state_dict`` /
    ``load_state_dict``.
    """

    def __init__(
        self,
        method=DEFAULT_METHOD,
        compressor: Optional[Compressor] = None,
        process_group: Optional[dist.ProcessGroup] = None,
        *,
        min_compress_numel: int = 1024,
        state_dtype: Optional[torch.dtype] = None,
        param_names: Optional[dict] = None,
        allow_biased: bool = False,
        always_compress: bool = False,
        seed: int = 0,
        hierarchy: Optional[Hierarchy] = None,
        side_stream: bool = False,
        dense_steps: int = 0,
        sparsity_warmup: int = 0,
        warmup_start: float = 0.25,
    ) -> None:
        self.method_impl = make_method(method)
        if self.method_impl.per_worker_iterates:
            raise ValueError(
                f"efcomm: method {self.method_impl!r} keeps a different model on every worker, and DDP keeps "
                "one identical model on every rank: run it in efcomm.sim, or use its shared-iterate form "
                "(per_worker=False; see efcomm.methods.MoTEF)"
            )
        compressor = default_compressor() if compressor is None else compressor
        self.method_impl.check_compressor(compressor, allow_biased)
        if not isinstance(min_compress_numel, int) or min_compress_numel < 1:
            raise ValueError(f"efcomm: min_compress_numel ({min_compress_numel!r}) must be a positive int")
        if state_dtype is not None and state_dtype not in _STATE_DTYPES:
            raise ValueError(f"efcomm: state_dtype ({state_dtype!r}) must be None or one of {_STATE_DTYPES}")
        if not (isinstance(seed, int) and not isinstance(seed, bool) and -(2**63) <= seed < 2**63):
            raise ValueError(f"efcomm: seed ({seed!r}) must be an int that fits 64 bits")
        self.seed = seed
        if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"efcomm: hierarchy ({hierarchy!r}) must be None or an efcomm.hierarchy.Hierarchy")
        self.hierarchy = hierarchy
        if not isinstance(side_stream, bool):
            raise TypeError(f"efcomm: side_stream ({side_stream!r}) must be a bool")
        self.side_stream = side_stream
        if not (isinstance(dense_steps, int) and not isinstance(dense_steps, bool) and dense_steps >= 0):
            raise ValueError(f"efcomm: dense_steps ({dense_steps!r}) must be an int >= 0")
        self.dense_steps = dense_steps
        self._check_warmup(sparsity_warmup, warmup_start, compressor)
        self.sparsity_warmup, self.warmup_start = sparsity_warmup, float(warmup_start)
        self._warm_wires: dict = {}  # step -> the warm-up's compressor at that step
        self._streams: dict = {}  # device -> the side stream (side_stream=True, CUDA buckets)
        self.method = self.method_impl.name
        self.allow_biased = allow_biased
        self.always_compress = bool(always_compress)
        self.compressor = compressor
        self.wire = self.method_impl.wire_compressor(compressor)  # what the method sends with
        self.process_group = process_group
        self.min_compress_numel = min_compress_numel
        self.state_dtype = state_dtype
        self.param_names = dict(param_names or {})
        self.buckets: dict[tuple, BucketState] = {}  # by bucket signature
        self.stats = CommStats()
        self._config_checked = False
        self._touched: set = set()  # signatures of the states used in the current step
        self._created: set = set()  # signatures of the states created in the current step
        self._compresses: dict = {}  # (numel, dtype) -> whether such a bucket is compressed
        self.world_size: Optional[int] = None  # the group's, once the state has joined one
        self.rank: Optional[int] = None
        self._saved_at: Optional[tuple] = None  # (world size, rank) of a loaded checkpoint

    def _check_warmup(self, steps, start, compressor: Compressor) -> None:
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            raise ValueError(f"efcomm: sparsity_warmup ({steps!r}) must be an int >= 0")
        if not steps:
            return
        ratio = getattr(compressor, "ratio", None)
        if not dataclasses.is_dataclass(compressor) or ratio is None or getattr(compressor, "k", None) is not None:
            raise ValueError(
                f"efcomm: sparsity_warmup needs a compressor with a ratio and no k (TopK, RandK, ChunkTopK); "
                f"got {compressor!r}"
            )
        if self.method_impl.wire_compressor(compressor) is not compressor:
            raise ValueError(
                f"efcomm: sparsity_warmup does not apply to {self.method_impl!r}, which sends its own messages"
            )
        if not (isinstance(start, (int, float)) and not isinstance(start, bool) and ratio < start <= 1.0):
            raise ValueError(f"efcomm: warmup_start ({start!r}) must be in (ratio = {ratio}, 1]")

    def wire_at(self, step: int) -> Compressor:
        """The compressor a bucket sends with at its compressed step ``step`` (the warm-up's)."""
        if step >= self.sparsity_warmup:
            return self.wire
        wire = self._warm_wires.get(step)
        if wire is None:
            ratio = self.warmup_start * (self.wire.ratio / self.warmup_start) ** (step / self.sparsity_warmup)
            wire = self._warm_wires[step] = dataclasses.replace(self.wire, ratio=min(1.0, ratio))
        return wire

    def config(self) -> dict:
        """The settings every rank must share (checked once, by hash, on the first bucket)."""
        warmup = {"sparsity_warmup": self.sparsity_warmup, "warmup_start": self.warmup_start}
        return (warmup if self.sparsity_warmup else {}) | {
            "method": repr(self.method_impl),
            "compressor": repr(self.compressor),
            "allow_biased": self.allow_biased,
            "always_compress": self.always_compress,
            "dense_steps": self.dense_steps,
            "min_compress_numel": self.min_compress_numel,
            "state_dtype": str(self.state_dtype),
            "seed": self.seed,
            "hierarchy": None if self.hierarchy is None else self.hierarchy.local_size,
        }

    def compresses(self, numel: int, dtype: torch.dtype) -> bool:
        """Whether a bucket of ``numel`` entries of ``dtype`` is compressed: large enough, and
        its message smaller than the dense buffer (or the method's messages dense by design)."""
        key = (numel, dtype)
        if key not in self._compresses:
            method = self.method_impl
            wire = method.wire_nbytes(Codec(self.wire, numel, dtype))
            smaller = self.always_compress or method.sends_dense or wire < numel * dtype.itemsize
            self._compresses[key] = numel >= self.min_compress_numel and smaller
        return self._compresses[key]

    def codec(
        self, bucket_state: BucketState, numel: int, dtype: torch.dtype, rank: int, device: torch.device
    ) -> Codec:
        """The method's compressor bound to a state layout at its current step (with the
        layout's hint when the compressor keeps one, e.g. threshold Top-k's)."""
        hint, key = None, self.wire.hint_key
        if key is not None:
            hint = bucket_state.hints.get(key)
            if hint is None:
                hint = self.wire.new_hint(device)
                if hint is not None:
                    bucket_state.hints[key] = hint
        ctx = Context(self.seed, bucket_state.steps, bucket_state.layout_id, rank, hint)
        return Codec(self.wire_at(bucket_state.steps), numel, dtype, ctx)

    def stream_for(self, device: torch.device) -> Optional["torch.cuda.Stream"]:
        """The stream the hook runs a CUDA bucket's encode on with ``side_stream=True`` (one per
        device, made once); None otherwise (the bucket's own stream)."""
        if not self.side_stream or device.type != "cuda":
            return None
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def end_step_if_last(self, last: bool) -> None:
        """At the end of a step, drops the states of layouts that DDP no longer has."""
        if last:
            for signature in [sig for sig in self.buckets if sig not in self._touched]:
                del self.buckets[signature]
            self._touched.clear()
            self._created.clear()

    def state_dict(self) -> dict:
        """This rank's state, under its rank: ``{"ranks": {"<rank>": {...}}}``. Save one per
        rank (``torch.save``), or every rank's together with torch.distributed.checkpoint
        (this is its ``Stateful`` protocol; see efcomm.checkpoint), where each rank's tensors
        keep their own keys."""
        rank = self.rank if self.rank is not None else 0
        entry = {
            "config": self.config(),
            "world_size": self.world_size,
            "rank": self.rank,
            "num_buckets": len(self.buckets),
            "stats": self.stats.state_dict(),
        }
        # No "buckets" key without buckets: a fresh state's state dict (the template that a
        # plain torch.distributed.checkpoint.load fills; a fresh state is rank 0's) then names
        # only keys that every checkpoint holds, so that load_state_dict, not DCP, tells the
        # user what to do (num_buckets says what the checkpoint held).
        if self.buckets:
            entry["buckets"] = [
                {
                    "signature": b.signature,
                    "steps": b.steps,
                    "tensors": {n: t.clone() for n, t in b.tensors.items()},
                    "hints": {n: t.clone() for n, t in b.hints.items()},
                }
                for b in self.buckets.values()
            ]
        return {"ranks": {str(rank): entry}}

    def load_state_dict(self, state: dict) -> None:
        """Restores a rank's state saved by :meth:`state_dict`: the same rank's, to continue
        exactly; or, when the group has another size (elastic resume), any rank's: the hook
        then re-forms the per-rank tensors on every rank alike before its first exchange
        (each method's ``reform`` rule, efcomm.methods), so that the method's invariants hold
        (EF21: every h_i := h, which keeps h = mean h_i). Ranks check that they loaded the
        same buckets at the same step before any exchange, and raise otherwise."""
        saved = per_rank(state)
        if saved["config"] != self.config():
            raise ValueError(
                f"efcomm: checkpoint configuration {saved['config']} differs from this state's {self.config()}"
            )
        buckets = saved.get("buckets", [])
        expected = int(saved.get("num_buckets", len(buckets)))
        if len(buckets) != expected:
            raise ValueError(
                f"efcomm: the checkpoint holds {expected} error-feedback bucket(s) for this rank, of which this "
                f"load read {len(buckets)}: a fresh EFState does not know which buckets a checkpoint holds, so a "
                "plain torch.distributed.checkpoint.load cannot fill it; load it with "
                "efcomm.checkpoint.load(state, checkpoint_id) (and the model and optimizer with dcp.load as before)"
            )
        self.buckets = {}
        for bucket in buckets:
            signature = as_signature(bucket["signature"])
            tensors = {n: t.clone() for n, t in bucket.get("tensors", {}).items()}
            hints = {n: t.clone() for n, t in bucket.get("hints", {}).items()}
            self.buckets[signature] = BucketState(
                signature, tensors, loaded=True, steps=int(bucket.get("steps", 0)), hints=hints
            )
        self.stats.load_state_dict(saved["stats"])
        world, rank = saved.get("world_size"), saved.get("rank")
        self._saved_at = None if world is None or rank is None else (int(world), int(rank))
        self._config_checked = False  # the ranks check again that they loaded alike

    def agreement_summary(self) -> dict:
        """What ranks must agree on before their first exchange (after a load too): the
        configuration, and the buckets they loaded with their step counts."""
        loaded = sorted((repr(agreement_key(b.signature)), b.steps) for b in self.buckets.values() if b.loaded)
        return {"config": self.config(), "saved_at": self._saved_at, "loaded": loaded}

    def join_group(self, world: int, rank: int, summaries: list) -> None:
        """Takes the place of rank ``rank`` of ``world`` once every rank's
        :meth:`agreement_summary` is known (the same list on every rank): raises if the
        ranks disagree, and re-forms the loaded per-rank state, on every rank alike, when any
        rank's checkpoint was saved by another rank or at another world size."""
        agree(summaries)
        method = self.method_impl
        if any(s["saved_at"] not in (None, (world, r)) for r, s in enumerate(summaries)):
            for b in self.buckets.values():
                if b.loaded:
                    b.tensors = method.reformed(b.tensors)
        if self.hierarchy is not None:
            self.hierarchy.check(world)
            world_of_method = self.hierarchy.nodes(world)  # the method's workers are the nodes
        else:
            world_of_method = world
        method.check_world(world_of_method)
        self.world_size, self.rank = world, rank
        self._saved_at = None
        self._config_checked = True

    def __getstate__(self) -> dict:
        # Drop what belongs to this process: the group, parameter identities (id() keys), the
        # side streams, and the agreement check, which the process that unpickles must run again.
        state = dict(self.__dict__)
        state.update(
            process_group=None, param_names={}, _config_checked=False, _touched=set(), _created=set(), _streams={}
        )
        if self.hierarchy is not None:  # its groups belong to this process
            state["hierarchy"] = Hierarchy(self.hierarchy.local_size)
        state["buckets"] = {sig: dataclasses.replace(b, nonfinite=None) for sig, b in self.buckets.items()}
        return state

    def bucket_signature(self, bucket: dist.GradBucket, dtype: torch.dtype) -> tuple:
        """What identifies a bucket layout: dtype, size and its parameters in order."""
        params = tuple((self.param_names.get(id(p), ""), tuple(p.shape)) for p in bucket.parameters())
        return (str(dtype), bucket.buffer().numel(), params)


def per_rank(state: dict) -> dict:
    """The one rank's entry of a :meth:`EFState.state_dict` (``{"ranks": {"<rank>": entry}}``)."""
    ranks = state.get("ranks")
    if not isinstance(ranks, dict) or len(ranks) != 1:
        held = sorted(ranks) if isinstance(ranks, dict) else None
        raise ValueError(f"efcomm: a state dict holds one rank's state under 'ranks'; this one holds {held!r}")
    return next(iter(ranks.values()))


def agree(summaries: list) -> None:
    """Raises, naming the ranks and buckets, unless every rank's agreement summary matches
    rank 0's (the same list is checked on every rank, so every rank raises alike)."""
    first = summaries[0]
    differing = [r for r, s in enumerate(summaries) if s["config"] != first["config"]]
    if differing:
        raise RuntimeError(
            f"efcomm: ranks disagree on the hook configuration: ranks {differing} differ from rank 0; "
            f"rank 0 has {json.dumps(first['config'], sort_keys=True)}, rank {differing[0]} has "
            f"{json.dumps(summaries[differing[0]]['config'], sort_keys=True)}"
        )
    differing = [r for r, s in enumerate(summaries) if s["loaded"] != first["loaded"]]
    if differing:

        def describe(r):
            loaded = summaries[r]["loaded"]
            if not loaded:
                return f"rank {r} holds no loaded state"
            steps = sorted({steps for _, steps in loaded})
            return f"rank {r} holds {len(loaded)} loaded bucket(s) at step(s) {steps}"

        reference = set(first["loaded"])
        buckets = sorted({sig for r in differing for sig, _ in reference ^ set(summaries[r]["loaded"])})
        raise RuntimeError(
            "efcomm: ranks disagree on the error-feedback state they loaded: "
            + "; ".join(describe(r) for r in [0] + differing)
            + f"; buckets that differ: {buckets[:4]}{' ...' if len(buckets) > 4 else ''}. Every rank must load "
            "the checkpoint of one run and step (at another world size, any rank's file will do)"
        )
