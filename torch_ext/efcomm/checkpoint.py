"""Distributed checkpoints of the hook state with torch.distributed.checkpoint (DCP).

:class:`efcomm.EFState` follows DCP's ``Stateful`` protocol, and its state dict keeps each
rank's tensors under that rank's own key (``ranks.<rank>``), so every rank's error-feedback
state lands in one checkpoint:

    import torch.distributed.checkpoint as dcp
    dcp.save({"model": model_state, "efcomm": ef_state}, checkpoint_id=path)   # every rank

A fresh state does not know which buckets a checkpoint holds, so loading goes through
:func:`load`, which reads the checkpoint's metadata first. It works at any world size: rank r
reads the entry of saved rank r when there is one, else of saved rank r mod n (n saved
ranks); the hook then re-forms the per-rank tensors on every rank alike before its first
exchange (efcomm.state.EFState.load_state_dict).
"""

from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .state import EFState

KEY = "efcomm"


def save(state: EFState, checkpoint_id, process_group: Optional[dist.ProcessGroup] = None) -> None:
    """``dcp.save({"efcomm": state}, checkpoint_id=...)`` on every rank of the group."""
    dcp.save({KEY: state}, checkpoint_id=checkpoint_id, process_group=process_group)


def saved_ranks(checkpoint_id, key: str = KEY) -> list:
    """The ranks whose efcomm state a DCP checkpoint holds (under ``key``)."""
    metadata = dcp.FileSystemReader(checkpoint_id).read_metadata()
    prefix = f"{key}.ranks."
    return sorted(
        {int(fqn[len(prefix) :].split(".")[0]) for fqn in metadata.state_dict_metadata if fqn.startswith(prefix)}
    )


def load(state: EFState, checkpoint_id, process_group: Optional[dist.ProcessGroup] = None, key: str = KEY) -> int:
    """Loads ``state`` from a DCP checkpoint saved at any world size (every rank calls it);
    returns the saved rank whose entry this rank read. The state of efcomm.register_fsdp
    chooses its entry by the shard it holds (efcomm.fsdp_state.FSDPState.load_checkpoint)."""
    load_checkpoint = getattr(state, "load_checkpoint", None)
    if load_checkpoint is not None:
        return load_checkpoint(checkpoint_id, process_group, key)
    ranks = saved_ranks(checkpoint_id, key)
    if not ranks:
        raise ValueError(f"efcomm: checkpoint {checkpoint_id!r} holds no efcomm state under {key!r}")
    rank = dist.get_rank(process_group)
    source = rank if rank in ranks else ranks[rank % len(ranks)]
    entry = read_entries(checkpoint_id, key, [source], process_group)[source]
    state.load_state_dict({"ranks": {str(source): entry}})
    return source


def read_entries(checkpoint_id, key: str, ranks: list, process_group=None, part: Optional[str] = None) -> dict:
    """{saved rank: its entry (or the entry's ``part``; None where it has none)} of a DCP
    checkpoint, read in one ``dcp.load`` (a collective: every rank of the group calls it once)."""
    metadata = dcp.FileSystemReader(checkpoint_id).read_metadata()
    prefixes = {r: f"{key}.ranks.{r}." + (f"{part}." if part else "") for r in ranks}
    template = {
        fqn: torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else None
        for fqn, md in metadata.state_dict_metadata.items()
        if any(fqn.startswith(prefix) for prefix in prefixes.values())
    }
    dcp.load(template, checkpoint_id=checkpoint_id, process_group=process_group)
    out = {}
    for r, prefix in prefixes.items():
        flat = {fqn: value for fqn, value in template.items() if fqn.startswith(prefix)}
        out[r] = _unflatten(flat, prefix) if flat else None
    return out


def _unflatten(flat: dict, prefix: str) -> dict:
    """The nested entry from DCP's flat keys ("buckets.0.tensors.h"); dicts whose keys are
    all indices become lists (EFState.state_dict writes lists of buckets only)."""
    nested: dict = {}
    for fqn, value in flat.items():
        *path, leaf = fqn[len(prefix) :].split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node

    return listify(nested)
