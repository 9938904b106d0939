"""efcomm in Hugging Face Accelerate: one call after ``accelerator.prepare``.

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = efcomm.integrations.accelerate.register(accelerator, model)  # method, compressor, **options
    ...  # train as usual, with accelerator.accumulate(model) for gradient accumulation
    accelerator.save_state(path)  # every rank's efcomm state with the rest; load_state(path) restores it
    state.stats.bytes_sent, state.stats.dense_bytes

``accelerator.prepare`` wraps the model in DistributedDataParallel when the run has several
processes; ``register`` installs ``efcomm.register`` on that wrapper and registers the state for
checkpointing (``accelerator.register_for_checkpointing``). Accelerate writes those objects
from the main process alone, so saving gathers every rank's state there and loading gives each
rank its own. ``accelerator.accumulate`` skips the exchange with DDP's ``no_sync``, which the
hook follows (it runs on the synchronising backward, with the accumulated gradients).
"""

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.nn.parallel import DistributedDataParallel

from ..state import DEFAULT_METHOD, EFState
from ._common import RankStates, install

WHO = "efcomm.integrations.accelerate.register"


def register(accelerator: Accelerator, model, method=DEFAULT_METHOD, compressor=None, **options) -> EFState:
    """Installs efcomm on ``model``, the DistributedDataParallel that ``accelerator.prepare``
    returned, and registers its state for ``accelerator.save_state``/``load_state`` (custom
    objects are saved by their order of registration: register in the same order when
    resuming). ``method``, ``compressor`` and ``options`` are :func:`efcomm.register`'s.
    Returns this rank's :class:`efcomm.EFState`. Raises on a model that Accelerate did not wrap
    in DDP: one not yet prepared, a single-process run, FSDP, DeepSpeed or Megatron-LM."""
    if not isinstance(model, DistributedDataParallel):
        kind = accelerator.distributed_type
        if kind == DistributedType.NO or accelerator.num_processes == 1:
            why = (
                "the run has one process, so Accelerate did not wrap the model in DDP (launch several: "
                "accelerate launch --num_processes N, or torchrun)"
            )
        elif kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
            why = f"the run uses {kind.value}, not DDP (for FSDP2 models, efcomm.register_fsdp)"
        else:
            why = "register after accelerator.prepare(model), with the model that it returned"
        raise TypeError(f"{WHO}: model is a {type(model).__name__}, not the DistributedDataParallel of the run: {why}")
    states = RankStates(WHO)
    states.attach(install(model, method, compressor, options, WHO))
    accelerator.register_for_checkpointing(states)
    return states.state
