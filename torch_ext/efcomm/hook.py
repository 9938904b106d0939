"""The DDP communication hook: one rank's bucket step (efcomm.engine) over the process group.

    state = efcomm.register(ddp_model, "ef21", efcomm.TopK(ratio=0.01))
    # or: ddp_model.register_comm_hook(efcomm.EFState(...), efcomm.ef_hook)

Per bucket and step the hook takes the bucket's gradient, runs the engine's step on this
rank's :class:`efcomm.EFState` with the DDP transport (one all-gather of the fixed-size
messages for most methods), and writes the step's output into the bucket. Ranks check once,
on the first bucket, that they share one configuration.
"""

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .compressors import Compressor
from .engine import BucketInput, bucket_step
from .hierarchy import hierarchical_step, make_hierarchy
from .methods import Worker
from .state import DEFAULT_METHOD, EFState
from .transport import DDPTransport


def ef_hook(state: EFState, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook: register with ``ddp_model.register_comm_hook(state, ef_hook)``."""
    group = state.process_group
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    if not state._config_checked:
        check_agreement(state)
    dtype = state.state_dtype or buffer.dtype
    g = buffer if dtype == buffer.dtype else buffer.to(dtype)
    bucket_input = BucketInput(
        g,
        state.bucket_signature(bucket, dtype),
        Worker(dist.get_rank(group), world),
        dense_bytes=buffer.numel() * buffer.element_size(),
        last=bucket.is_last(),
    )
    if state.hierarchy is None:
        step = bucket_step(state, bucket_input)
    else:
        step = hierarchical_step(state, bucket_input, state.hierarchy.local_size)

    def finish(out: Tensor) -> Tensor:
        if out is not buffer:
            buffer.copy_(out)
        return buffer

    transport = DDPTransport(group, state.hierarchy)
    side = state.stream_for(buffer.device)
    if side is None:
        return transport.run(step, finish)
    # side_stream=True: the encode and the collectives' issue run on a side stream that starts
    # after the bucket is ready, so that the backward pass's next kernels need not queue behind
    # them; the decode runs in the collective future's callback (on streams that wait for it),
    # and DDP's wait on the returned future orders the optimizer after it. The state's tensors
    # are only touched by this bucket's step, which is ordered after the last step's decode
    # through the backward stream (DDP waited on that step's futures on it).
    side.wait_stream(torch.cuda.current_stream(buffer.device))
    if g is not buffer:
        g.record_stream(side)  # made on the backward stream, read on the side one
    with torch.cuda.stream(side):
        return transport.run(step, finish)


def check_agreement(state: EFState) -> None:
    """Before a state's first exchange (and again after a load): every rank all-gathers its
    configuration and the buckets it loaded, and every rank raises if any rank differs, so
    that disagreeing ranks fail at once instead of deadlocking in mismatched collectives;
    then the state joins the group (re-forming a checkpoint of another world size)."""
    group = state.process_group
    summaries = [None] * dist.get_world_size(group)
    dist.all_gather_object(summaries, state.agreement_summary(), group=group)
    state.join_group(dist.get_world_size(group), dist.get_rank(group), summaries)


def register(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    method=DEFAULT_METHOD,
    compressor: Optional[Compressor] = None,
    process_group: Optional[dist.ProcessGroup] = None,
    **options,
) -> EFState:
    """Creates an :class:`EFState` for ``ddp_model`` and registers :func:`ef_hook` on it.
    Without ``method`` and ``compressor``: classic error feedback with Top-1% in the compact
    message (efcomm.state.DEFAULT_METHOD, default_compressor; docs/convergence.md says why).

    ``options`` are passed to :class:`EFState` (``min_compress_numel``, ``state_dtype``,
    ``allow_biased``, ``seed``, ``side_stream``), except ``hierarchy``: None (flat), the number of ranks per
    node, or "auto" (torchrun's LOCAL_WORLD_SIZE); its process groups are created here, so
    every rank must call ``register`` (efcomm.hierarchy).
    DDP's own ``mixed_precision`` (which installs a hook of its own) is rejected.
    """
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(f"efcomm.register: ddp_model must be a DistributedDataParallel; got {type(ddp_model).__name__}")
    if getattr(ddp_model, "mixed_precision", None) is not None:
        raise ValueError("efcomm.register: DDP's mixed_precision installs its own hook; use state_dtype instead")
    if getattr(ddp_model, "_use_python_reducer", False):
        raise ValueError(
            "efcomm.register: the compiled python-reducer mode of DDP (torch._dynamo.config.optimize_ddp = "
            "'python_reducer') is not supported: it calls communication hooks once per parameter with "
            "(grad, param), not per bucket with a GradBucket, and traces them into the compiled graph; "
            "torch.compile DDP with the default optimize_ddp=True, which calls the hook eagerly per bucket"
        )
    names = {id(p): name for name, p in ddp_model.module.named_parameters()}
    group = process_group if process_group is not None else ddp_model.process_group
    options["hierarchy"] = make_hierarchy(options.get("hierarchy"), group)
    state = EFState(method, compressor, group, param_names=names, **options)
    ddp_model.register_comm_hook(state, ef_hook)
    return state
