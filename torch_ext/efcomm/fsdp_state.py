"""The state of efcomm under FSDP2 (efcomm.register_fsdp): when a step ends, how a unit's state
layouts are named, and how a checkpoint finds its units again.

* **A step ends with the backward pass.** FSDP skips the hook of a unit whose parameters got no
  gradient (frozen layers, branches a step does not use), so counting the units that reported
  cannot tell when a step ends. FSDP queues one final callback per backward pass on the
  autograd engine (its root post-backward callback, which also runs the post-backward of the
  units the autograd graph did not reach); efcomm.register_fsdp wraps it so that the step ends
  right after it (statistics, ``dense_steps``), when a hook exchanged in that backward pass.
  A unit that skipped a step keeps its state for its next one.
* **Layouts.** A unit's state is keyed by the unit's module path, its place in the FSDP mesh
  and its parameters (names and full shapes); paths and names lose the prefixes of wrappers
  (``_orig_mod.`` of torch.compile, ``_checkpoint_wrapped_module.`` of activation
  checkpointing), so that a checkpoint of a compiled model loads into the plain one and back.
* **Checkpoints.** Every rank's entry says where its state sat (replica and shard, or rank in the
  compressed reduce-scatter's group). :meth:`FSDPState.load_checkpoint` (what
  efcomm.checkpoint.load runs) reads the entry of the saved rank that held this rank's shard
  (of the same replica when it exists), whatever process group the caller names; at another
  shard count it re-lays out the unit states of one saved replica into this rank's shard
  (:func:`reshard`). A loaded state that matches no unit of the model raises, naming what was
  loaded and what the model has.
"""

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .bucket_state import BucketState, as_signature
from .state import EFState

# Module names of wrappers that add a level to parameter and module paths.
WRAPPERS = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")
UNIT = "#fsdp"  # the first entry of a unit's layout: ("#fsdp", (path, shard rank, shard count))
ROW = "#row"  # the compressed reduce-scatter's rows: ("#row", (row, world)), then ("#fsdp", (path,))


def canonical_name(name: str) -> str:
    """A module or parameter path without wrapper levels (``_orig_mod.blocks.0`` -> ``blocks.0``)."""
    return ".".join(part for part in name.split(".") if part not in WRAPPERS)


def unit_path(path: str) -> str:
    """The name of a unit in layouts and messages: its canonical module path, ``<root>`` for the root."""
    return canonical_name(path) or "<root>"


def canonical_signature(signature: tuple) -> tuple:
    """A layout (as saved, possibly by a run whose paths carried wrapper prefixes) in canonical names."""
    dtype, numel, params = as_signature(signature)
    out = []
    for name, value in params:
        if name == UNIT:
            value = (unit_path(value[0]),) + tuple(value[1:])
        elif not name.startswith("#"):
            name = canonical_name(name)
        out.append((name, tuple(value)))
    return (dtype, numel, tuple(out))


def split_signature(signature: tuple) -> tuple:
    """(where: the '#' entries of a layout, naming the unit and its place; its parameters)."""
    params = signature[2]
    where = tuple(p for p in params if p[0].startswith("#"))
    return where, tuple(p for p in params if not p[0].startswith("#"))


def describe(where: tuple) -> str:
    """A unit's place, for messages: 'blocks.0' shard 0 of 2, or row 1 of 4 of 'blocks.0'."""
    parts = dict(where)
    if ROW in parts:
        row, world = parts[ROW]
        return f"row {row} of {world} of {parts[UNIT][0]!r}"
    path, *shard = parts[UNIT]
    return f"{path!r} shard {shard[0]} of {shard[1]}" if shard else repr(path)


class FSDPState(EFState):
    """The :class:`efcomm.EFState` of :func:`efcomm.register_fsdp`: its process group is the
    replicate group (the method's workers are the replicas), or without one the FSDP mesh's
    group (the compressed reduce-scatter's workers are its ranks); its state dict is keyed by
    this rank's global rank, so that every rank's shards land under their own keys in one
    torch.distributed.checkpoint checkpoint (efcomm.checkpoint.save / load). Loading at another
    number of replicas re-forms the state by the method's elastic rule, as for DDP; at another
    shard count the units' states are re-laid out by parameter first."""

    def __init__(self, *args, global_rank: int = 0, placement: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.global_rank = global_rank
        # Where this rank's state sits: {"replica", "replicas", "shard", "shards"} with a
        # replicate group, {"rank", "world"} for the compressed reduce-scatter.
        self.placement = dict(placement or {})
        self.units: list = []  # the hook of every hooked FSDP unit, in module order
        self._step_exchanged = False  # a hook exchanged in the current backward pass
        self._loaded: dict = {}  # where (a unit's place) -> the loaded layout, until its first step

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # The hooks belong to this process's model; a step in flight belongs to its backward.
        state.update(units=[], _step_exchanged=False)
        return state

    # ---- the step --------------------------------------------------------------------------

    def exchanged(self) -> None:
        """A unit's hook exchanges in the current backward pass: its end ends a step."""
        self._step_exchanged = True

    def end_step(self) -> None:
        """The end of a backward pass (after FSDP's final callback): the step ends when a hook
        exchanged in it. Unlike DDP's buckets, a unit that did not run keeps its state (it
        exists; it had no gradient)."""
        if self._step_exchanged:
            self._step_exchanged = False
            self.stats.close_step()
        self._touched.clear()
        self._created.clear()

    # ---- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        (entry,) = super().state_dict()["ranks"].values()
        if self.rank is None and not self.buckets:  # fresh: rank 0's, as EFState's (a plain dcp.load's template)
            return {"ranks": {"0": entry}}
        if self.buckets:
            entry["fsdp"] = dict(self.placement)
        return {"ranks": {str(self.global_rank): entry}}

    def load_state_dict(self, state: dict) -> None:
        """EFState's load, with the layouts' names made canonical; raises when a loaded layout
        matches no unit of the model (once the units are registered)."""
        super().load_state_dict(state)
        self.buckets = {
            canonical_signature(sig): BucketState(
                canonical_signature(sig), b.tensors, loaded=True, steps=b.steps, hints=b.hints
            )
            for sig, b in self.buckets.items()
        }
        self._loaded = {}
        if self.units:  # (an unpickled state has no units, and no hooks to run)
            self._match_units()

    def _unit_layouts(self) -> dict:
        """{place: parameters} of every layout the registered units use (a place: the '#'
        entries of a layout, see split_signature)."""
        return {where: unit.params for unit in self.units for where in unit.places()}

    def _match_units(self) -> None:
        layouts = self._unit_layouts()
        unmatched = [sig for sig in self.buckets if layouts.get(split_signature(sig)[0]) != split_signature(sig)[1]]
        if unmatched:
            self.buckets = {}
            loaded = sorted({describe(split_signature(s)[0]) for s in unmatched})
            existing = sorted({describe(w) for w in layouts})
            detail = ""
            differing = [split_signature(s) for s in unmatched if split_signature(s)[0] in layouts]
            if differing:
                where, params = differing[0]
                detail = (
                    f"; {describe(where)} exists with other parameters (the checkpoint's {_names(params)}, "
                    f"the model's {_names(layouts[where])})"
                )
            raise ValueError(
                f"efcomm.register_fsdp: {len(unmatched)} loaded state layout(s) match no FSDP unit of this "
                f"model on rank {self.global_rank} (a unit is matched by its module path, wrapper prefixes "
                f"such as '_orig_mod.' stripped, its place in the mesh, and its parameters' names and shapes): "
                f"loaded {_names(loaded)}; this rank's units: {_names(existing)}{detail}"
            )
        self._loaded = {split_signature(sig)[0]: sig for sig in self.buckets}

    def check_loaded(self, signatures: list) -> None:
        """Before a unit's first step after a load: its loaded state must have the layout the
        hook sees (a state of another dtype or size would otherwise start over silently)."""
        for sig in signatures:
            where = split_signature(sig)[0]
            loaded = self._loaded.pop(where, None)
            if loaded is not None and loaded != sig:
                raise ValueError(
                    f"efcomm.register_fsdp: the state loaded for {describe(where)} is {loaded[1]} entries of "
                    f"{loaded[0]}, and the unit's hook sees {sig[1]} entries of {sig[0]} (the saved run's "
                    "state_dtype or reduce dtype, or the parameters of the unit that get gradients, differ)"
                )

    def load_checkpoint(self, checkpoint_id, process_group: Optional[dist.ProcessGroup] = None, key: str = "efcomm"):
        """efcomm.checkpoint.load for this state (every rank calls it; ``process_group`` only
        carries DCP's collectives): reads the entry of the saved rank that held this rank's
        shard, or, at another shard count, every shard of one saved replica, re-laid out into
        this rank's shard. Returns the saved rank whose entry was read (the first shard's, after
        a re-layout)."""
        from . import checkpoint

        ranks = checkpoint.saved_ranks(checkpoint_id, key)
        if not ranks:
            raise ValueError(f"efcomm: checkpoint {checkpoint_id!r} holds no efcomm state under {key!r}")
        placements = checkpoint.read_entries(checkpoint_id, key, ranks, process_group, part="fsdp")
        sources, resharded = self._sources(ranks, {r: p for r, p in placements.items() if p})
        entries = checkpoint.read_entries(checkpoint_id, key, sources, process_group)
        entry = entries[sources[0]]
        if resharded:
            entry = dict(entry, buckets=reshard([entries[r] for r in sources], self.placement))
            entry["num_buckets"] = len(entry["buckets"])
        self.load_state_dict({"ranks": {str(sources[0]): entry}})
        return sources[0]

    def _sources(self, ranks: list, placements: dict) -> tuple:
        """(the saved ranks to read, whether their shards must be re-laid out)."""
        mine = self.placement
        if not placements:  # saved before its first step, or by an efcomm that did not record placements
            rank = self.global_rank
            return [rank if rank in ranks else ranks[rank % len(ranks)]], False
        modes = {"shards" in p for p in placements.values()}
        if modes != {"shards" in mine}:
            saved = "the exchange between replicas" if True in modes else "the compressed reduce-scatter"
            raise ValueError(
                f"efcomm.register_fsdp: checkpoint of {saved}; this state runs "
                f"{'the exchange between replicas' if 'shards' in mine else 'the compressed reduce-scatter'}"
            )
        if "shards" not in mine:
            same = [r for r, p in placements.items() if (p["world"], p["rank"]) == (mine["world"], mine["rank"])]
            if not same:
                worlds = sorted({p["world"] for p in placements.values()})
                raise ValueError(
                    f"efcomm.register_fsdp: the compressed reduce-scatter's state was saved by {worlds} rank(s) "
                    f"and this group has {mine['world']}: its state (every row of every unit) does not re-form "
                    "at another world size"
                )
            return same[:1], False
        replicas = min(p["replicas"] for p in placements.values())
        replica = mine["replica"] % replicas
        held = {(p["replica"], p["shards"], p["shard"]): r for r, p in placements.items()}
        exact = held.get((replica, mine["shards"], mine["shard"]))
        if exact is not None:
            return [exact], False
        shards = sorted({p["shards"] for p in placements.values()})
        if len(shards) != 1 or any((replica, shards[0], s) not in held for s in range(shards[0])):
            raise ValueError(
                f"efcomm.register_fsdp: the checkpoint lacks the shards of saved replica {replica} "
                f"(it holds {sorted(held)} as (replica, shards, shard)) that this rank (replica {mine['replica']}, "
                f"shard {mine['shard']} of {mine['shards']}) needs"
            )
        return [held[(replica, shards[0], s)] for s in range(shards[0])], True


# ---- another shard count ------------------------------------------------------------------


def _rows(shape: tuple) -> tuple:
    """(dim-0 size, entries per dim-0 row) of a parameter (a 0-d one as one row)."""
    shape = tuple(shape)
    return (shape[0], math.prod(shape[1:])) if shape else (1, 1)


def _shard_numel(params: tuple, shards: int) -> int:
    """Entries of one shard of these parameters: FSDP2 cuts dim 0 in chunks of ceil(d0 / shards)
    rows and pads the last ones (torch/distributed/fsdp/_fully_shard: _get_dim0_padded_size)."""
    return sum(math.ceil(d0 / shards) * row for d0, row in map(_rows, (shape for _, shape in params)))


def _unshard(parts: list, params: tuple) -> list:
    """Every parameter's full tensor (flat) from its shards (``parts``: each shard's flat tensor,
    shard order), the padding dropped."""
    shards = len(parts)
    out, offset = [], 0
    for _, shape in params:
        d0, row = _rows(shape)
        chunk = math.ceil(d0 / shards)
        pieces = []
        for s, part in enumerate(parts):
            valid = max(0, min(chunk, d0 - s * chunk))
            pieces.append(part[offset : offset + valid * row])
        out.append(torch.cat(pieces))
        offset += chunk * row
    return out


def _shard(full: list, params: tuple, shard: int, shards: int) -> Tensor:
    """This shard of the parameters' full tensors, padded as FSDP2 pads it (zeros)."""
    pieces = []
    for tensor, (_, shape) in zip(full, params):
        d0, row = _rows(shape)
        chunk = math.ceil(d0 / shards)
        start, stop = min(shard * chunk, d0), min((shard + 1) * chunk, d0)
        piece = tensor.new_zeros(chunk * row)
        piece[: (stop - start) * row] = tensor[start * row : stop * row]
        pieces.append(piece)
    return torch.cat(pieces)


def reshard(entries: list, placement: dict) -> list:
    """The saved buckets of every shard of one replica (``entries``, shard order), re-laid out
    into this rank's shard (``placement``): each unit's per-coordinate tensors re-assembled by
    parameter and cut as FSDP2 cuts them at the new shard count. Raises where a unit's state does
    not hold whole dim-0 chunks of its parameters (then it cannot be re-laid out)."""
    shard, shards = placement["shard"], placement["shards"]
    by_unit: dict = {}
    for saved_shard, entry in enumerate(entries):
        for bucket in entry.get("buckets", []):
            sig = canonical_signature(bucket["signature"])
            where, params = split_signature(sig)
            path = dict(where)[UNIT][0]
            by_unit.setdefault((path, sig[0], params), {})[saved_shard] = (sig, bucket)
    out = []
    for (path, dtype, params), parts in by_unit.items():
        if sorted(parts) != list(range(len(entries))):
            raise ValueError(
                f"efcomm.register_fsdp: unit {path!r} has a state in shards {sorted(parts)} of the saved "
                f"replica's {len(entries)}; it cannot be re-laid out into shard {shard} of {shards}"
            )
        expected = _shard_numel(params, len(entries))
        if any(sig[1] != expected for sig, _ in parts.values()):
            raise ValueError(
                f"efcomm.register_fsdp: the state of unit {path!r} holds {parts[0][0][1]} entries per shard, not "
                f"the {expected} of whole dim-0 chunks of its parameters (a unit with parameters left without "
                "gradients, or sharded on another dim): it cannot be re-laid out at another shard count"
            )
        buckets = [parts[s][1] for s in range(len(entries))]
        tensors = {
            name: _shard(_unshard([b["tensors"][name] for b in buckets], params), params, shard, shards)
            for name in buckets[0]["tensors"]
        }
        signature = (dtype, _shard_numel(params, shards), ((UNIT, (path, shard, shards)),) + params)
        out.append({"signature": signature, "steps": max(int(b.get("steps", 0)) for b in buckets), "tensors": tensors})
    return out


def _names(items) -> str:
    """A list for messages: its first six items."""
    items = [n if isinstance(n, str) else n[0] for n in items]
    return f"{items[:6]}{' ...' if len(items) > 6 else ''}"
