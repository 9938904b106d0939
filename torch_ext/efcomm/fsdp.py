"""efcomm under FSDP2: the exchange between replicas of a sharded model ("custom HSDP").

    mesh = init_device_mesh("cuda", (replicas, per_node), mesh_dim_names=("replicate", "shard"))
    for block in model.blocks:
        fully_shard(block, mesh=mesh["shard"])          # a 1-D mesh: the ranks of one node
    fully_shard(model, mesh=mesh["shard"])
    state = efcomm.register_fsdp(model, "ef21", efcomm.TopK(0.01), replicate_group=mesh["replicate"].get_group())

FSDP2 reduce-scatters each unit's gradient over the node (NVLink) and hands this rank's shard
of the node's mean gradient to the unit's all-reduce hook (``FSDPModule.set_all_reduce_hook``),
which replaces the all-reduce between replicas that native HSDP would run on the network.
efcomm's hook runs the step engine (efcomm.engine, the DDP hook's very step) on that shard,
with the DDP transport over ``replicate_group`` (the ranks holding the same shard on the
other nodes), and writes the mean over replicas back in place. The state of a unit is
shard-sized: 1/(ranks per node) of the unit.

What the hook sees, and what it does about it:

* FSDP averages over the shard group only; the hook averages over the replicas (so the
  gradient is the global mean, as native HSDP's). With an fp16 reduce dtype FSDP divides
  part of the mean after the hook (the hook then sees scaled sums): the scale is the same on
  every replica and step, so the hook's mean is still the right one once FSDP divides. With
  ``set_gradient_divide_factor(F)`` native HSDP sums over replicas and divides by F: the
  hook sums over replicas too (the mean times the number of replicas).
* ``set_requires_gradient_sync(False)``: FSDP neither reduce-scatters nor calls the hook.
* ``set_requires_all_reduce(False)``: on a 1-D mesh FSDP gates nothing, so the hook keeps
  the shard aside (as native HSDP keeps its partial reduce output), leaves a zero gradient,
  and adds the kept shards to the next exchanged one.

A step ends with the backward pass (efcomm.fsdp_state): units without gradients (frozen,
unused) skip their hook, and their state waits for their next step.

Statistics: ``stats.bytes_sent`` is efcomm's exchange between replicas (also
``inter_node_bytes``), ``dense_bytes`` what native HSDP's all-reduce of the same shards would
send (the shard in the reduce dtype), so ``compression_factor`` compares the two.
``intra_node_bytes`` is FSDP's reduce-scatter (this rank's input, in the reduce dtype, every
backward's), the same as native HSDP's: kept apart (``native_bytes_by_group``), in neither.
"""

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .compressors import Compressor
from .engine import BucketInput, bucket_step, row_signature, scatter_step
from .fsdp_state import ROW, UNIT, FSDPState, canonical_name, unit_path
from .hook import check_agreement
from .methods import Worker
from .state import DEFAULT_METHOD, EFState
from .transport import DDPTransport


def _fsdp_classes():
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_common import DDPMeshInfo, FSDPMeshInfo

    return FSDPModule, FSDPMeshInfo, DDPMeshInfo


class _UnitHook:
    """The all-reduce hook of one FSDP unit (its parameter group)."""

    def __init__(self, state: FSDPState, path: str, param_group, param_names: dict) -> None:
        self.state = state
        self.path = unit_path(path)
        self.param_group = param_group
        mesh_info = param_group.mesh_info
        self.shard_rank, self.shard_size = mesh_info.shard_mesh_rank, mesh_info.shard_mesh_size
        self.params = _unit_params(param_group, param_names)
        self.pending: Optional[Tensor] = None  # shards kept while set_requires_all_reduce(False)

    def places(self) -> list:
        """The place of this rank's shard of the unit, in its layout: the unit's path and the shard."""
        return [((UNIT, (self.path, self.shard_rank, self.shard_size)),)]

    def signature(self, dtype: torch.dtype, numel: int) -> tuple:
        """The layout of this rank's shard of the unit: its place and the unit's parameters
        (names and full shapes). Not a named layout (its name starts with '#'): a shard's state
        cannot follow parameters into another layout."""
        return (str(dtype), numel, self.places()[0] + self.params)

    def __call__(self, reduce_output: Tensor) -> None:
        state = self.state
        es = reduce_output.element_size()
        # FSDP's reduce-scatter that made this shard (this rank's input: every shard of the unit),
        # the same as native HSDP's, on every backward, kept micro-batches included.
        state.stats.record_native("intra", reduce_output.numel() * self.shard_size * es)
        if not self.param_group.all_reduce_grads:
            if self.pending is None:
                self.pending = reduce_output.clone()
            else:
                self.pending.add_(reduce_output)
            reduce_output.zero_()
            return
        if self.pending is not None:
            reduce_output.add_(self.pending)
            self.pending = None
        if not state._config_checked:
            check_agreement(state)
        group = state.process_group
        replicas = dist.get_world_size(group)
        dtype = state.state_dtype or reduce_output.dtype
        g = reduce_output if dtype == reduce_output.dtype else reduce_output.to(dtype)
        signature = self.signature(dtype, g.numel())
        state.check_loaded([signature])
        state.exchanged()  # the step ends with the backward pass (_end_steps_with_backward)
        step = bucket_step(
            state,
            BucketInput(
                g,
                signature,
                Worker(dist.get_rank(group), replicas),
                dense_bytes=reduce_output.numel() * es,  # native HSDP's all-reduce of the shard
                last=False,
                group="inter",
            ),
        )
        # The hook runs on FSDP's all-reduce stream (CUDA) and must leave the shard written when
        # it returns: every exchange is waited for on that stream (with NCCL the stream waits, not
        # the host). The host does wait where an op reads back: the default CUDA Top-k select
        # reads a count per encode (docs/fsdp.md, "CUDA and the host").
        out = DDPTransport(group).run_blocking(step)
        if out is not reduce_output:
            reduce_output.copy_(out)
        if self.param_group.gradient_divide_factor is not None:  # native HSDP sums over replicas
            reduce_output.mul_(replicas)


class _CompressedReduceScatter:
    """FSDP's reduce-scatter of one unit replaced by efcomm's (``set_custom_reduce_scatter``):
    the engine's :func:`efcomm.engine.scatter_step` over the FSDP mesh. FSDP calls it on its
    reduce-scatter stream with ``op`` AVG or SUM (a pre-multiplied sum, NCCL's, is refused)."""

    def __init__(self, state: FSDPState, path: str, param_group, param_names: dict) -> None:
        self.state = state
        self.path = unit_path(path)
        self.param_group = param_group
        self.world = param_group.mesh_info.shard_mesh_size
        self.params = _unit_params(param_group, param_names)

    def places(self) -> list:
        """The places of the unit's rows in their layouts (every rank keeps every row)."""
        return [((ROW, (row, self.world)), (UNIT, (self.path,))) for row in range(self.world)]

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: Tensor, input_tensor: Tensor, group, op, async_op: bool = False):
        state = self.state
        if op == dist.ReduceOp.AVG:
            scale = 1
        elif op == dist.ReduceOp.SUM:
            scale = dist.get_world_size(group)
        else:
            raise ValueError(
                f"efcomm.register_fsdp: the compressed reduce-scatter takes FSDP's AVG or SUM, not {op!r} "
                "(a gradient divide factor other than the world size makes FSDP ask for a pre-multiplied sum)"
            )
        if not state._config_checked:
            check_agreement(state)
        world = dist.get_world_size(group)
        dtype = state.state_dtype or input_tensor.dtype
        g = input_tensor.to(dtype) if dtype != input_tensor.dtype else input_tensor
        signature = (str(dtype), g.numel(), ((UNIT, (self.path,)),) + self.params)
        state.check_loaded([row_signature(signature, row, world) for row in range(world)])
        state.exchanged()
        step = scatter_step(
            state,
            BucketInput(
                g,
                signature,
                Worker(dist.get_rank(group), world),
                dense_bytes=input_tensor.numel() * input_tensor.element_size(),
                last=False,
            ),
        )
        output_tensor.copy_(DDPTransport(group).run_blocking(step))  # on FSDP's reduce-scatter stream
        if scale != 1:
            output_tensor.mul_(scale)
        return None


def _unit_param_group(module):
    return module._get_fsdp_state()._fsdp_param_group


def _unit_params(param_group, param_names: dict) -> tuple:
    """(name, full shape) of every parameter of a unit, in FSDP's order."""
    return tuple((param_names.get(id(p.sharded_param), ""), tuple(p._orig_size)) for p in param_group.fsdp_params)


def register_fsdp(
    model: nn.Module,
    method=DEFAULT_METHOD,
    compressor: Optional[Compressor] = None,
    replicate_group: Optional[dist.ProcessGroup] = None,
    **options,
) -> EFState:
    """Installs efcomm on every FSDP2 unit of ``model`` (the modules ``fully_shard`` wrapped,
    the root included) and returns the :class:`EFState` they share. ``method`` and
    ``compressor`` default to those of :func:`efcomm.register` (classic EF, compact Top-1%).

    ``replicate_group``: the ranks that hold the same shard as this one on the other replicas
    (every unit sharded over one 1-D mesh: the ranks of one node). Each unit's reduce-scatter
    output then goes through efcomm's exchange between replicas (see the module's doc).
    Without it, each unit's reduce-scatter over its mesh is replaced by efcomm's compressed one
    (``set_custom_reduce_scatter``; efcomm.engine.scatter_step): stateless with ``"none"`` and
    an unbiased compressor (QSGD, stochastic Int8), or a non-lazy error-feedback method, whose
    state then covers every row of the unit (EF21: twice the unsharded unit per rank).
    ``options`` are those of :class:`efcomm.EFState` (``min_compress_numel``, ``state_dtype``
    (e.g. ``torch.float32`` with a bf16 ``reduce_dtype``), ``allow_biased``, ``seed``, ...;
    not ``hierarchy``, which FSDP's own mesh replaces). Every rank must call it.
    """
    FSDPModule, FSDPMeshInfo, DDPMeshInfo = _fsdp_classes()
    if not isinstance(model, nn.Module):
        raise TypeError(f"efcomm.register_fsdp: model must be an nn.Module; got {type(model).__name__}")
    if "hierarchy" in options:
        raise ValueError("efcomm.register_fsdp: hierarchy does not apply: FSDP's mesh shards inside the node")
    if options.get("side_stream"):
        raise ValueError("efcomm.register_fsdp: side_stream does not apply: the exchange runs on FSDP's own stream")
    units = [(path, m) for path, m in model.named_modules() if isinstance(m, FSDPModule)]
    if not units:
        raise TypeError(
            f"efcomm.register_fsdp: model ({type(model).__name__}) holds no FSDP module: wrap its blocks and "
            "the model itself with torch.distributed.fsdp.fully_shard first"
        )
    groups = [(path or "<root>", _unit_param_group(m)) for path, m in units]
    groups = [(path, g) for path, g in groups if g is not None]  # units that hold no parameter
    if not groups:
        raise ValueError("efcomm.register_fsdp: no FSDP unit of the model holds parameters")
    shard_ranks = None
    for path, g in groups:
        if isinstance(g.mesh_info, DDPMeshInfo) or not isinstance(g.mesh_info, FSDPMeshInfo):
            raise ValueError(
                f"efcomm.register_fsdp: unit {path!r} is sharded over a {g.mesh_info.mesh.ndim}-D mesh "
                f"({type(g.mesh_info).__name__}); with replicate_group, shard every unit over a 1-D mesh "
                "(e.g. mesh['shard']) and pass the replicate dimension's group"
            )
        ranks = dist.get_process_group_ranks(g.mesh_info.shard_process_group)
        if shard_ranks is None:
            shard_ranks = ranks
        elif ranks != shard_ranks:
            raise ValueError(
                f"efcomm.register_fsdp: unit {path!r} is sharded over ranks {ranks}, another unit over "
                f"{shard_ranks}: every unit must share one mesh"
            )
        if g._all_reduce_hook is not None or isinstance(g._reduce_scatter_comm, _CompressedReduceScatter):
            raise RuntimeError(
                f"efcomm.register_fsdp: unit {path!r} already has an all-reduce hook or efcomm's reduce-scatter "
                f"({g._all_reduce_hook or g._reduce_scatter_comm!r}); register efcomm once per model"
            )
    names = {id(p): canonical_name(name) for name, p in model.named_parameters()}
    if replicate_group is None:
        state = _register_reduce_scatter(groups, names, method, compressor, options)
        _end_steps_with_backward(state, [m for _, m in units])
        return state
    _check_replicate_group(replicate_group, shard_ranks)
    mesh_info = groups[0][1].mesh_info
    placement = {
        "replica": dist.get_rank(replicate_group),
        "replicas": dist.get_world_size(replicate_group),
        "shard": mesh_info.shard_mesh_rank,
        "shards": mesh_info.shard_mesh_size,
    }
    state = FSDPState(
        method,
        compressor,
        replicate_group,
        param_names=names,
        global_rank=dist.get_rank(),
        placement=placement,
        **options,
    )
    for path, g in groups:
        hook = _UnitHook(state, path, g, names)
        state.units.append(hook)
        g._all_reduce_hook = hook
    _end_steps_with_backward(state, [m for _, m in units])
    return state


def _register_reduce_scatter(groups: list, names: dict, method, compressor, options: dict) -> FSDPState:
    """Without a replicate group: every unit's reduce-scatter over its FSDP mesh compressed."""
    shard_group = groups[0][1].mesh_info.shard_process_group
    placement = {"rank": dist.get_rank(shard_group), "world": dist.get_world_size(shard_group)}
    state = FSDPState(
        method, compressor, shard_group, param_names=names, global_rank=dist.get_rank(), placement=placement, **options
    )
    if state.method_impl.lazy:
        raise ValueError(
            f"efcomm.register_fsdp: the compressed reduce-scatter runs the non-lazy methods only, not {method!r}"
        )
    for path, g in groups:
        if type(g._reduce_scatter_comm).__name__ != "DefaultReduceScatter":
            raise RuntimeError(
                f"efcomm.register_fsdp: unit {path!r} already has a custom reduce-scatter ({g._reduce_scatter_comm!r})"
            )
        comm = _CompressedReduceScatter(state, path, g, names)
        state.units.append(comm)
        g._reduce_scatter_comm = comm
    return state


def _end_steps_with_backward(state: FSDPState, modules: list) -> None:
    """Ends efcomm's step right after FSDP's final callback of each backward pass. FSDP queues
    one per backward pass on the autograd engine (whichever unit's pre-backward runs first queues
    its own ``_root_post_backward_final_callback``; it runs the post-backward of the units the
    graph did not reach), so every unit's is wrapped. Counting the units whose hook ran cannot
    tell the end of a step: FSDP skips the hook of a unit without gradients."""
    for module in modules:
        fsdp_state = module._get_fsdp_state()
        callback = getattr(fsdp_state, "_root_post_backward_final_callback", None)
        if not callable(callback):
            raise RuntimeError(
                f"efcomm.register_fsdp: FSDP2 of torch {torch.__version__} has no "
                "_root_post_backward_final_callback, with which efcomm ends its steps"
            )

        def end_of_backward(callback=callback) -> None:
            try:
                callback()
            finally:
                state.end_step()

        fsdp_state._root_post_backward_final_callback = end_of_backward


def _check_replicate_group(replicate_group, shard_ranks: list) -> None:
    if not isinstance(replicate_group, dist.ProcessGroup):
        raise TypeError(
            f"efcomm.register_fsdp: replicate_group must be a ProcessGroup (e.g. mesh['replicate'].get_group()); "
            f"got {type(replicate_group).__name__}"
        )
    world = dist.get_world_size()
    replicas, shards = dist.get_world_size(replicate_group), len(shard_ranks)
    replicate_ranks = dist.get_process_group_ranks(replicate_group)
    if world % shards or replicas * shards != world:
        raise ValueError(
            f"efcomm.register_fsdp: {replicas} replicas (replicate_group) x {shards} shards (the FSDP mesh) "
            f"must make the world size ({world})"
        )
    if set(replicate_ranks) & set(shard_ranks) != {dist.get_rank()}:
        raise ValueError(
            f"efcomm.register_fsdp: replicate_group (ranks {replicate_ranks}) must hold this rank "
            f"({dist.get_rank()}) and no other rank of its FSDP mesh (ranks {shard_ranks})"
        )
