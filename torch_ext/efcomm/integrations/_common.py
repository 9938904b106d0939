"""What the trainer integrations share: installing efcomm on the DDP model a trainer made, and
carrying every rank's error-feedback state through the trainer's checkpoints.

The trainers write their checkpoints in two ways. Lightning and Accelerate write one file from
rank 0, so :class:`RankStates` gathers every rank's state into it; the Hugging Face Trainer
writes a folder to which each rank adds its own files, so :func:`save_rank_file` and
:func:`load_rank_file` write and read one file per rank. Both resume at the same world size
exactly, and at another one as efcomm.checkpoint.load does (rank r takes saved rank r's state,
or saved rank r mod n's, which the hook re-forms before its first exchange).
"""

import glob
import os
import re
import warnings
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..hook import register
from ..state import EFState, per_rank

RANK_FILE = "efcomm_state_rank{rank}.pt"


def install(ddp_model, method, compressor, options: dict, who: str) -> EFState:
    """The one place where an integration installs efcomm on the model its trainer wrapped:
    ``efcomm.register`` (the gradient hook, with the parameter names that let the state
    follow bucket rebuilds and checkpoints). The checkpoint code below needs only the
    returned EFState, whichever entry point made it."""
    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(
            f"{who}: efcomm compresses the gradient exchange of DistributedDataParallel, and the trainer's "
            f"model is a {type(ddp_model).__name__}"
        )
    return register(ddp_model, method, compressor, **options)


def check_options(method, compressor, options: dict) -> None:
    """Raises on arguments that :func:`install` would reject, for integrations that install later
    (when the trainer has made its DDP model): at construction, not after the processes start."""
    EFState(method, compressor, **{k: v for k, v in options.items() if k != "hierarchy"})


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _group_rank(state: EFState) -> tuple:
    group = state.process_group
    return dist.get_rank(group), dist.get_world_size(group)


def own_entry(state: EFState) -> dict:
    """This rank's entry of ``state.state_dict()``, its tensors on the CPU."""
    return _to_cpu(per_rank(state.state_dict()))


def choose(ranks: list, read, rank: int, world: int, where: str) -> dict:
    """This rank's entry among the saved ranks ``ranks`` (``read(r)`` gives saved rank r's
    entry): its own; at another world size (elastic resume), saved rank ``rank mod n``'s.
    Raises when the checkpoint was saved at this world size but lacks this rank's entry (a
    file lost, or written by a rank that did not hold every rank's state): another rank's
    state would not continue this run."""
    if not ranks:
        raise ValueError(f"{where} holds no efcomm state")
    ranks = sorted(ranks)
    source = rank if rank in ranks else ranks[rank % len(ranks)]
    entry = read(source)
    if source != rank and entry.get("world_size") == world:
        raise ValueError(
            f"{where} holds the efcomm state of ranks {ranks} of a run of {world} ranks, not of rank {rank}: "
            "every rank's state must be saved for the run to continue"
        )
    return entry


class RankStates:
    """An EFState as the trainers that write one checkpoint file from rank 0 see it (Lightning,
    Accelerate): ``state_dict()`` gathers every rank's state on rank 0, ``{"ranks": {"0": ...,
    "1": ...}}`` (a collective: these trainers call it on every rank when they save; other ranks
    get their own entry only), and ``load_state_dict`` takes this rank's entry.

    :meth:`attach` puts a new state in place of the last one (Lightning wraps the model in a new
    DDP at every ``fit``): it takes the state that :meth:`load_later` kept (Lightning restores
    callbacks before it makes the DDP model), else carries the last state over."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.state: Optional[EFState] = None
        self._pending: Optional[dict] = None

    def attach(self, state: EFState) -> None:
        previous, self.state = self.state, state
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)
        elif previous is not None:
            state.load_state_dict(previous.state_dict())

    def load_later(self, saved: dict) -> None:
        """Keeps ``saved`` for the next :meth:`attach`."""
        self._pending = saved

    def state_dict(self) -> dict:
        if self.state is None:  # nothing trained yet: keep what was loaded
            return self._pending or {}
        rank, world = _group_rank(self.state)
        mine = own_entry(self.state)
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, group=self.state.process_group, group_dst=0)
        if rank != 0:
            return {"ranks": {str(rank): mine}}
        return {"ranks": {str(r): entry for r, entry in enumerate(gathered)}}

    def load_state_dict(self, saved: dict) -> None:
        if self.state is None:
            self.load_later(saved)
            return
        rank, world = _group_rank(self.state)
        ranks = saved.get("ranks", {})
        entry = choose([int(r) for r in ranks], lambda r: ranks[str(r)], rank, world, f"{self.who}: the checkpoint")
        self.state.load_state_dict({"ranks": {str(rank): entry}})


def save_rank_file(state: EFState, directory: str) -> str:
    """Writes this rank's state to ``directory/efcomm_state_rank{rank}.pt``; returns the path."""
    rank, _ = _group_rank(state)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, RANK_FILE.format(rank=rank))
    torch.save({"ranks": {str(rank): own_entry(state)}}, path)
    return path


def load_rank_file(state: EFState, directory: str, who: str) -> bool:
    """Loads this rank's state from the files of :func:`save_rank_file` in ``directory``;
    warns and returns False when the folder holds none (a checkpoint of a run without efcomm:
    the state starts afresh)."""
    files = {}
    for path in glob.glob(os.path.join(glob.escape(directory), RANK_FILE.format(rank="*"))):
        found = re.fullmatch(r"efcomm_state_rank(\d+)\.pt", os.path.basename(path))
        if found:
            files[int(found.group(1))] = path
    if not files:
        warnings.warn(
            f"{who}: the checkpoint {directory} holds no efcomm state; the error-feedback state starts afresh",
            stacklevel=2,
        )
        return False
    rank, world = _group_rank(state)
    entry = choose(
        list(files),
        lambda r: per_rank(torch.load(files[r], map_location="cpu", weights_only=True)),
        rank,
        world,
        f"{who}: the checkpoint {directory}",
    )
    state.load_state_dict({"ranks": {str(rank): entry}})
    return True
