"""Worker functions for the multi-process FSDP2 tests (spawned processes import this module).

As in ddp_workers.py, one launch runs many scenarios in a row on one process group: a small
transformer (embedding, attention + MLP blocks, each block its own ``fully_shard`` unit, the
root holding the embedding and the head) on gloo ranks laid out as a (replicas, shards) mesh:
rank = replica * shards + shard."""

import gc
import pickle
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

import efcomm
from ddp_workers import _join_group, free_init_method, shutdown

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_fsdp import Transformer  # noqa: E402  (the benchmark's model, at the tests' size)

VOCAB, DIM, SEQ, BATCH = 64, 32, 8, 4
COMPACT_TOP1 = dict(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)


class TinyTransformer(Transformer):
    """benchmarks/bench_fsdp.py's transformer at the tests' size (2 heads)."""

    def __init__(self, blocks: int = 2) -> None:
        super().__init__(VOCAB, DIM, blocks, heads=2)


class BranchTransformer(TinyTransformer):
    """Block 1 runs only while ``use_branch`` is set: a branch that some steps skip (FSDP then
    skips that unit's hook: it has no gradient)."""

    use_branch = True

    def forward(self, tokens):
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            if i != 1 or self.use_branch:
                x = block(x)
        return self.head(self.norm(x))


def batch(gen):
    """A learnable task: the next token is the current one plus one (mod VOCAB)."""
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    return x, (x + 1) % VOCAB


def sharded(mesh, mp_policy=None, model=None):
    """The transformer (or ``model``) with each block and the root wrapped by ``fully_shard``
    over ``mesh`` (1-D: plain FSDP; 2-D (replicate, shard): FSDP's native HSDP)."""
    model = TinyTransformer() if model is None else model
    kwargs = {} if mp_policy is None else {"mp_policy": mp_policy}
    for block in model.blocks:
        fully_shard(block, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, **kwargs)
    return model


def train(model, opt, gen, steps, *, micro=1, before_micro=None):
    """``steps`` optimizer steps of ``micro`` micro-batches each; returns the losses."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        for m in range(micro):
            if before_micro is not None:
                before_micro(model, m, micro)
            x, y = batch(gen)
            loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB).float(), y.reshape(-1))
            loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def shards(model) -> torch.Tensor:
    """This rank's shards of every parameter, flattened, in fp32."""
    return torch.cat([p.to_local().detach().reshape(-1).float() for p in model.parameters()])


def make_mesh(replicas: int, shards_per_replica: int):
    return init_device_mesh("cpu", (replicas, shards_per_replica), mesh_dim_names=("replicate", "shard"))


def _efcomm_run(
    ctx,
    method,
    compressor,
    steps,
    *,
    lr=0.1,
    micro=1,
    before_micro=None,
    before_step=None,
    mp_policy=None,
    mesh=None,
    model=None,
    record=False,
    **options,
):
    """register_fsdp on the transformer (or ``model``) over ctx's mesh, trained ``steps`` steps
    (``method`` None: register_fsdp's defaults); with ``record``, every hook call is recorded."""
    mesh = ctx["mesh"] if mesh is None else mesh
    model = sharded(mesh["shard"], mp_policy, model)
    chosen = () if method is None else (method, compressor)
    state = efcomm.register_fsdp(
        model, *chosen, replicate_group=mesh["replicate"].get_group(), min_compress_numel=256, **options
    )
    calls = record_hooks(state) if record else None
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(dist.get_rank())
    inter = []
    losses = []
    for step in range(steps):
        if before_step is not None:
            before_step(model, step)
        losses += train(model, opt, gen, 1, micro=micro, before_micro=before_micro)
        inter.append(state.stats.inter_node_bytes)
    out = {"losses": losses, "inter_bytes": inter}
    if record:
        out["calls"] = calls
    return model, state, opt, out


def _native_run(ctx, steps, *, lr=0.1, micro=1, before_micro=None, mp_policy=None):
    model = sharded(ctx["mesh"], mp_policy)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(dist.get_rank())
    losses = train(model, opt, gen, steps, micro=micro, before_micro=before_micro)
    return model, losses


def record_hooks(state) -> list:
    """Wraps the all-reduce hook of every unit of a register_fsdp state (with a replicate group)
    so that each call is recorded: the unit, the shard the hook received and the one it left,
    whether FSDP asked for the exchange (set_requires_all_reduce), and the state's step count
    then. The tests recompute what the hook must leave from what every replica received."""
    calls = []
    for unit in state.units:
        group = unit.param_group
        hook = group._all_reduce_hook

        def recording(reduce_output, hook=hook, path=unit.path, group=group):
            received, steps = reduce_output.detach().clone(), state.stats.steps
            hook(reduce_output)
            calls.append(
                {
                    "unit": path,
                    "in": received,
                    "out": reduce_output.detach().clone(),
                    "exchanged": group.all_reduce_grads,
                    "step": steps,
                }
            )

        group._all_reduce_hook = recording
    return calls


def buckets_of(state) -> dict:
    """{layout: {tensor name: a copy}} of a state's buckets."""
    return {sig: {n: t.clone() for n, t in b.tensors.items()} for sig, b in state.buckets.items()}


def unit_shards(state) -> list:
    """(shard numel, dtype) of every hooked unit, as its hook saw them."""
    return [(sig[1], sig[0]) for sig in state.buckets]


def scenario_ef21_compact_top1(rank, world, ctx):
    """EF21 + Top-1% with bf16 values and 16-bit offsets, next to FSDP's native HSDP (on 4
    ranks; 8 ranks on 2 cores take twice as long, and the 4-rank run shows the comparison)."""
    model, state, _, out = _efcomm_run(ctx, "ef21", efcomm.TopK(**COMPACT_TOP1), 30)
    native_losses = _native_run(ctx, 30)[1] if world <= 4 else None
    out.update(
        shards=shards(model),
        native_losses=native_losses,
        stats=state.stats.state_dict(),
        units=[(sig[1], sig[0]) for sig in state.buckets],
        history=list(state.stats.history),
        unpickled_buckets=len(pickle.loads(pickle.dumps(state)).buckets),
        intra_node_bytes=state.stats.intra_node_bytes,
        compression_factor=state.stats.compression_factor,
    )
    return out


def scenario_default_steps(rank, world, ctx):
    """register_fsdp's defaults (EF with compact Top-1%) with dense_steps=2, 6 steps: on a model
    whose first block is frozen (its unit never gets a gradient, so FSDP never calls its hook),
    and on one whose second block runs at even steps only; every hook call recorded."""
    frozen = TinyTransformer()
    frozen.blocks[0].requires_grad_(False)

    def even_steps_only(model, step):
        model.use_branch = step % 2 == 0

    out = {}
    for name, model, before_step in (("frozen", frozen, None), ("branch", BranchTransformer(), even_steps_only)):
        model, state, _, run = _efcomm_run(
            ctx, None, None, 6, model=model, before_step=before_step, record=True, dense_steps=2
        )
        run.update(stats=state.stats.state_dict(), shards=shards(model), layouts=len(state.buckets))
        out[name] = run
    return out


def scenario_dense_equals_native_hsdp(rank, world, ctx):
    """EF21 with the Identity compressor through the engine's all-gather path, and plain
    averaging (``none`` + Identity, dense all-reduce), against FSDP's own HSDP exchange."""
    native, _ = _native_run(ctx, 5)
    ef21, _, _, _ = _efcomm_run(ctx, "ef21", efcomm.Identity(), 5, always_compress=True)
    mean, state, _, _ = _efcomm_run(ctx, "none", efcomm.Identity(), 5)
    return {
        "native": shards(native),
        "ef21_identity": shards(ef21),
        "mean": shards(mean),
        "stats": state.stats.state_dict(),
    }


def _no_all_reduce_first(model, m, micro):
    model.set_requires_all_reduce(m == micro - 1)


def _no_sync_first(model, m, micro):
    model.set_requires_gradient_sync(m == micro - 1)


def scenario_accumulation(rank, world, ctx):
    """Two micro-batches per step: without any sync on the first (set_requires_gradient_sync),
    and with the reduce-scatter but without the exchange between replicas on the first
    (set_requires_all_reduce), each next to native HSDP doing the same."""
    out = {}
    for name, gate in (("no_sync", _no_sync_first), ("no_all_reduce", _no_all_reduce_first)):
        native, _ = _native_run(ctx, 4, micro=2, before_micro=gate)
        model, state, _, _ = _efcomm_run(ctx, "none", efcomm.Identity(), 4, micro=2, before_micro=gate)
        _, ef, _, ef_run = _efcomm_run(ctx, "ef", efcomm.TopK(0.05), 4, micro=2, before_micro=gate, record=True)
        ef_run.update(steps=ef.stats.steps, intra_node_bytes=ef.stats.intra_node_bytes, stats=ef.stats.state_dict())
        out[name] = {"native": shards(native), "efcomm": shards(model), "steps": state.stats.steps, "ef": ef_run}
    return out


def scenario_bf16_reduce_dtype(rank, world, ctx):
    """A bf16 reduce dtype (MixedPrecisionPolicy) with the state in fp32 (state_dtype)."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    model, state, _, out = _efcomm_run(ctx, "ef21", efcomm.TopK(0.1), 15, mp_policy=policy, state_dtype=torch.float32)
    out.update(
        shards=shards(model),
        state_dtypes=sorted({str(t.dtype) for b in state.buckets.values() for t in b.tensors.values()}),
        signature_dtypes=sorted({sig[0] for sig in state.buckets}),
        stats=state.stats.state_dict(),
    )
    return out


def scenario_reduce_scaling(rank, world, ctx):
    """The cases where FSDP divides after the hook or sums: an fp16 reduce dtype (the hook
    sees partly divided sums) and set_gradient_divide_factor (native HSDP then sums over
    replicas), plain averaging through efcomm against native HSDP."""
    shard_count = ctx["mesh"]["shard"].size()
    policy = MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float16)
    native, _ = _native_run(ctx, 4, mp_policy=policy)
    ours, _, _, _ = _efcomm_run(ctx, "none", efcomm.Identity(), 4, mp_policy=policy)
    _, _, _, ef = _efcomm_run(ctx, "ef", efcomm.TopK(0.05), 4, mp_policy=policy, record=True, state_dtype=torch.float32)
    out = {"fp16": {"native": shards(native), "efcomm": shards(ours), "ef": ef}}

    def divide(model, m, micro):  # on every unit (FSDPModule.set_gradient_divide_factor sets its own)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(float(shard_count))

    native, _ = _native_run(ctx, 4, before_micro=divide)
    ours, _, _, _ = _efcomm_run(ctx, "none", efcomm.Identity(), 4, before_micro=divide)
    _, _, _, ef = _efcomm_run(ctx, "ef", efcomm.TopK(0.05), 4, before_micro=divide, record=True)
    out["divide_factor"] = {"native": shards(native), "efcomm": shards(ours), "ef": ef}
    return out


def _overflow_run(model, state, rank) -> dict:
    """8 steps with an inf loss on rank 0 at step 3 (the optimizer step skipped where a gradient
    is not finite, as GradScaler does)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(rank)
    skipped = []
    for step in range(8):
        x, y = batch(gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        if step == 3 and rank == 0:
            loss = loss * float("inf")
        loss.backward()
        if all(torch.isfinite(p.grad.to_local()).all() for p in model.parameters()):
            opt.step()
        else:
            skipped.append(step)
    return {
        "skipped": skipped,
        "shards": shards(model),
        "stats": state.stats.state_dict(),
        "units": len(state.units),
        "finite": bool(torch.isfinite(shards(model)).all()),
    }


def scenario_nonfinite(rank, world, ctx):
    """An overflow on rank 0 at step 3: every rank's exchange restarts its states at the next
    step; between replicas, and (``reduce_scatter``) in the compressed reduce-scatter, whose
    ranks each see only their own row of the aggregate."""
    mesh = ctx["mesh"]
    model = sharded(mesh["shard"])
    state = efcomm.register_fsdp(
        model, "ef21", efcomm.TopK(0.05), replicate_group=mesh["replicate"].get_group(), min_compress_numel=256
    )
    out = _overflow_run(model, state, rank)
    model = sharded(init_device_mesh("cpu", (world,)))
    state = efcomm.register_fsdp(model, "ef21", efcomm.TopK(0.05), min_compress_numel=256)
    out["reduce_scatter"] = _overflow_run(model, state, rank)
    return out


def scenario_bad_inputs(rank, world, ctx):
    """The errors of register_fsdp, as messages."""
    mesh = ctx["mesh"]
    replicate = mesh["replicate"].get_group()
    errors = {}

    def error(name, fn):
        try:
            fn()
            errors[name] = None
        except (TypeError, ValueError, RuntimeError) as e:
            errors[name] = f"{type(e).__name__}: {e}"

    error("not_fsdp", lambda: efcomm.register_fsdp(TinyTransformer(), replicate_group=replicate))
    error("native_hsdp", lambda: efcomm.register_fsdp(sharded(mesh), replicate_group=replicate))
    error(
        "shard_group", lambda: efcomm.register_fsdp(sharded(mesh["shard"]), replicate_group=mesh["shard"].get_group())
    )
    error("not_a_group", lambda: efcomm.register_fsdp(sharded(mesh["shard"]), replicate_group=[0, 2]))
    alone, _ = dist.new_subgroups_by_enumeration([[r] for r in range(world)])
    error("does_not_divide", lambda: efcomm.register_fsdp(sharded(mesh["shard"]), replicate_group=alone))

    def twice():
        model = sharded(mesh["shard"])
        efcomm.register_fsdp(model, replicate_group=replicate)
        efcomm.register_fsdp(model, replicate_group=replicate)

    error("twice", twice)
    return errors


def scenario_resume_save(rank, world, ctx):
    """Trains 6 steps, saves the model, optimizer (get_state_dict) and efcomm state in one DCP
    checkpoint, trains 4 more."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, state, opt, _ = _efcomm_run(ctx, "ef21", efcomm.TopK(0.05), 6)
    model_sd, opt_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": opt_sd, "efcomm": state}, checkpoint_id=f"{ctx['directory']}/fsdp")
    saved = buckets_of(state)
    losses = train(model, opt, torch.Generator().manual_seed(1000 + rank), 4)
    return {"shards": shards(model), "stats": state.stats.state_dict(), "losses": losses, "buckets": saved}


def scenario_resume_load(rank, world, ctx):
    """Loads the checkpoint of resume_save (saved at ctx["saved_mesh"]) into fresh objects on
    a mesh of the same shard count and as many replicas as the world holds, and trains 4
    steps (at the same world size: the saved run's 4 steps). First, a plain dcp.load of the
    fresh efcomm state, which must raise efcomm's error."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from efcomm import checkpoint

    replicas, shards_per_replica = ctx["saved_mesh"]
    path = f"{ctx['directory']}/fsdp"
    same = world == replicas * shards_per_replica
    mesh = ctx["mesh"] if same else make_mesh(world // shards_per_replica, shards_per_replica)
    model, state, opt, _ = _efcomm_run(ctx, "ef21", efcomm.TopK(0.05), 0, mesh=mesh)
    try:
        dcp.load({"efcomm": state}, checkpoint_id=path)
        plain_error = None
    except Exception as e:  # DCP wraps the errors of the ranks
        plain_error = str(e)
    model_sd, opt_sd = get_state_dict(model, opt)
    dcp.load({"model": model_sd, "optim": opt_sd}, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=opt_sd)
    source = checkpoint.load(state, path)
    loaded = buckets_of(state)
    # The same checkpoint loaded by a call that names the replicate group (whose ranks are
    # replica indices, not the saved global ranks), and into a model with one block fewer.
    _, by_replicas, _, _ = _efcomm_run(ctx, "ef21", efcomm.TopK(0.05), 0, mesh=mesh)
    by_replicas_source = checkpoint.load(by_replicas, path, process_group=mesh["replicate"].get_group())
    _, one_block, _, _ = _efcomm_run(ctx, "ef21", efcomm.TopK(0.05), 0, mesh=mesh, model=TinyTransformer(blocks=1))
    try:
        checkpoint.load(one_block, path)
        mismatch_error = None
    except ValueError as e:
        mismatch_error = str(e)
    losses = train(model, opt, torch.Generator().manual_seed(1000 + rank), 4)
    return {
        "shards": shards(model),
        "source": source,
        "loaded": loaded,
        "by_replicas": buckets_of(by_replicas),
        "by_replicas_source": by_replicas_source,
        "mismatch_error": mismatch_error,
        "stats": state.stats.state_dict(),
        "losses": losses,
        "replicas": dist.get_world_size(state.process_group),
        "plain_error": plain_error,
    }


def scenario_reshard_load(rank, world, ctx):
    """Loads resume_save's checkpoint (2 replicas x 2 shards) on this launch's mesh, another
    shard count (2 x 4): each rank's unit states re-laid out from every shard of its saved
    replica; then 4 steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from efcomm import checkpoint

    path = f"{ctx['directory']}/fsdp"
    model, state, opt, _ = _efcomm_run(ctx, "ef21", efcomm.TopK(0.05), 0)
    model_sd, opt_sd = get_state_dict(model, opt)
    dcp.load({"model": model_sd, "optim": opt_sd}, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=opt_sd)
    source = checkpoint.load(state, path)
    loaded = buckets_of(state)
    losses = train(model, opt, torch.Generator().manual_seed(1000 + rank), 4)
    return {
        "source": source,
        "loaded": loaded,
        "stats": state.stats.state_dict(),
        "losses": losses,
        "shards": shards(model),
    }


def _plain_fsdp_run(mesh, steps):
    model = sharded(mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, train(model, opt, torch.Generator().manual_seed(dist.get_rank()), steps)


def scenario_compressed_reduce_scatter(rank, world, ctx):
    """Without a replicate group, on a 1-D mesh of every rank: the reduce-scatter itself
    compressed. Identity through the all-to-all path (against FSDP's own), the stateless
    unbiased QSGD and stochastic Int8 with ``none``, and EF21 + Top-5%, next to FSDP's own."""
    mesh = init_device_mesh("cpu", (world,))
    steps = 15
    native, native_losses = _plain_fsdp_run(mesh, steps)
    out = {"native": shards(native), "native_losses": native_losses}
    for name, method, compressor, options in (
        ("identity", "none", efcomm.Identity(), {"always_compress": True}),
        ("qsgd", "none", efcomm.QSGD(levels=127), {}),
        ("int8", "none", efcomm.Int8(stochastic=True), {}),
        ("ef21", "ef21", efcomm.TopK(0.05), {}),
    ):
        model = sharded(mesh)
        state = efcomm.register_fsdp(model, method, compressor, min_compress_numel=256, **options)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = train(model, opt, torch.Generator().manual_seed(rank), steps)
        out[name] = {
            "shards": shards(model),
            "losses": losses,
            "stats": state.stats.state_dict(),
            "units": sorted((sig[1], sig[2][0][1][0]) for sig in state.buckets),
            "state_numel": sum(t.numel() for b in state.buckets.values() for t in b.tensors.values()),
        }
    return out


def scenario_compile(rank, world, ctx):
    """torch.compile (backend aot_eager): a DDP model compiled whole (DDP's graph-splitting
    optimizer, which calls the hook eagerly per bucket) with efcomm's hook against the same
    compiled model with DDP's all-reduce; register_fsdp's defaults on a compiled FSDP2 model,
    every hook call recorded, and its state loaded into the plain model's; DDP's compiled
    python-reducer mode refused."""
    import torch._dynamo
    from torch.nn.parallel import DistributedDataParallel

    from ddp_workers import _mlp

    def ddp_run(with_efcomm):
        torch._dynamo.reset()
        model = _mlp()
        ddp = DistributedDataParallel(model)
        if with_efcomm:
            efcomm.register(ddp, "none", efcomm.Identity(), min_compress_numel=32, always_compress=True)
        compiled = torch.compile(ddp, backend="aot_eager")
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(5):
            x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(compiled(x), y).backward()
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def fsdp_run():
        """register_fsdp (its defaults) on the compiled model, whose paths carry '_orig_mod.';
        its state then loads into the state of the same model, not compiled."""
        torch._dynamo.reset()
        mesh = ctx["mesh"]
        compiled = torch.compile(sharded(mesh["shard"]), backend="aot_eager")
        replicate = mesh["replicate"].get_group()
        state = efcomm.register_fsdp(compiled, replicate_group=replicate, min_compress_numel=256)
        calls = record_hooks(state)
        opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(rank)
        losses = []
        for _ in range(3):
            x, y = batch(gen)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(x).reshape(-1, VOCAB), y.reshape(-1))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        plain = efcomm.register_fsdp(sharded(mesh["shard"]), replicate_group=replicate, min_compress_numel=256)
        plain.load_state_dict(state.state_dict())
        return {
            "calls": calls,
            "losses": losses,
            "steps": state.stats.steps,
            "saved_layouts": sorted(state.buckets, key=repr),
            "loaded_layouts": sorted(plain.buckets, key=repr),
            "plain_units": [unit.path for unit in plain.units],
        }

    out = {"ddp_efcomm": ddp_run(True), "ddp_allreduce": ddp_run(False), "fsdp": fsdp_run()}
    previous = torch._dynamo.config.optimize_ddp
    torch._dynamo.config.optimize_ddp = "python_reducer"
    try:
        efcomm.register(DistributedDataParallel(_mlp()), "ef21")
        out["python_reducer_error"] = None
    except ValueError as e:
        out["python_reducer_error"] = str(e)
    finally:
        torch._dynamo.config.optimize_ddp = previous
    torch._dynamo.reset()
    return out


def scenario_killed_rank(rank, world, ctx):
    """The last rank dies in the middle of training (run last: the group is broken
    afterwards): the others must fail with an error within seconds, not hang."""
    model, state, opt, _ = _efcomm_run(ctx, "ef21", efcomm.TopK(0.05), 2)
    if rank == world - 1:
        return {"died": True}
    start = time.monotonic()
    try:
        train(model, opt, torch.Generator().manual_seed(rank), 20)
        error = None
    except RuntimeError as e:
        error = str(e)
    return {"error": error, "seconds": time.monotonic() - start}


SCENARIOS = {name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")}
BREAKS_GROUP = "killed_rank"

# (launch, (replicas, shards), scenarios, the launch whose files it reads or None). The hooks'
# scenarios have a launch of their own: a test of them (the mutation check's) runs only it.
LAUNCHES = (
    ("2x2-hooks", (2, 2), ["default_steps", "accumulation", "reduce_scaling"], None),
    (
        "2x2",
        (2, 2),
        [
            "ef21_compact_top1",
            "dense_equals_native_hsdp",
            "bf16_reduce_dtype",
            "nonfinite",
            "bad_inputs",
            "compressed_reduce_scatter",
            "compile",
            "resume_save",
            "resume_load",
        ],
        None,
    ),
    ("2x4", (2, 4), ["ef21_compact_top1", "resume_load", "reshard_load", "killed_rank"], "2x2"),
)


def scenarios_worker(rank, world_size, init_method, result_dir, mesh_shape, names, ctx):
    _join_group(rank, world_size, init_method)
    ctx = dict(ctx, mesh=make_mesh(*mesh_shape))
    if ctx.get("saved_mesh") is None:
        ctx["saved_mesh"] = mesh_shape
    results = {}
    for name in names:
        start = time.monotonic()
        results[name] = SCENARIOS[name](rank, world_size, ctx)
        results[name + "_seconds"] = time.monotonic() - start
        gc.collect()
        if name != BREAKS_GROUP:
            dist.barrier()
    torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    if BREAKS_GROUP in names:
        sys.stdout.flush()
        os._exit(0)
    shutdown()


def spawn(fn, world_size: int, *args) -> list:
    """Runs fn(rank, world_size, init_method, result_dir, *args) on world_size gloo ranks,
    forked from a server that has imported torch, efcomm and this module once (starting 8
    interpreters that each import them takes most of a launch on 2 busy cores)."""
    import multiprocessing
    import tempfile

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "efcomm", "fsdp_workers"])
    with tempfile.TemporaryDirectory() as result_dir:
        mp.start_processes(
            fn,
            args=(world_size, free_init_method(), result_dir, *args),
            nprocs=world_size,
            join=True,
            start_method="forkserver",
        )
        return [torch.load(Path(result_dir) / f"rank{r}.pt") for r in range(world_size)]


def run_launch(directory: str, name: str, launches=LAUNCHES) -> list:
    """Runs launch ``name`` with its files in ``directory`` (where the launch it reads from has
    run: its checkpoint); returns every rank's results."""
    meshes = {launch[0]: launch[1] for launch in launches}
    _, mesh_shape, names, after = next(launch for launch in launches if launch[0] == name)
    ctx = {"directory": directory, "saved_mesh": None if after is None else meshes[after]}
    return spawn(scenarios_worker, mesh_shape[0] * mesh_shape[1], mesh_shape, names, ctx)


def run_launches(directory: str, launches=LAUNCHES) -> dict:
    """Every launch, in order: {launch: every rank's results, launch + "_seconds": its time}."""
    results = {}
    for name, *_ in launches:
        start = time.monotonic()
        results[name] = run_launch(directory, name, launches)
        results[name + "_seconds"] = time.monotonic() - start
    return results


def devices_worker(rank, world_size, init_method, result_dir, devices):
    """One rank (a mesh of 1 replica x 1 shard) per device of ``devices`` in one process, with a
    process group of gloo for CPU tensors and NCCL for CUDA ones: register_fsdp with EF21 and
    Identity (always compressed), and with compact Top-1%, on each device. On CUDA the hook
    runs on FSDP's all-reduce stream."""
    torch.set_num_threads(1)
    backend = "cpu:gloo,cuda:nccl" if "cuda" in devices else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    results = {}
    for device in devices:
        if device == "cuda":
            torch.cuda.set_device(0)
        mesh = init_device_mesh(device, (1, 1), mesh_dim_names=("replicate", "shard"))
        for name, compressor, options in (
            ("identity", efcomm.Identity(), {"always_compress": True}),
            ("top1", efcomm.TopK(**COMPACT_TOP1), {}),
        ):
            model = sharded(mesh["shard"])
            state = efcomm.register_fsdp(
                model,
                "ef21",
                compressor,
                replicate_group=mesh["replicate"].get_group(),
                min_compress_numel=256,
                **options,
            )
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            gen = torch.Generator().manual_seed(0)
            losses, inter = [], []
            for _ in range(10):
                x, y = batch(gen)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x.to(device)).reshape(-1, VOCAB), y.to(device).reshape(-1))
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                inter.append(state.stats.inter_node_bytes)
            results[(device, name)] = {
                "shards": shards(model).cpu(),
                "losses": losses,
                "inter_bytes": inter,
                "units": [(sig[1], sig[0]) for sig in state.buckets],
                "state_devices": sorted(
                    {str(t.device.type) for b in state.buckets.values() for t in b.tensors.values()}
                ),
            }
    torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    shutdown()


def sync_worker(rank, world_size, init_method, result_dir, select):
    """One CUDA rank (NCCL; a mesh of 1 replica x 1 shard) with the Top-k select ``select``
    (EFCOMM_TOPK_SELECT): register_fsdp's defaults, then EF21 with compact Top-1%, 3 steps each
    to warm up (the agreement check, the dense start), then 3 steps with every unit's hook run
    under torch.cuda.set_sync_debug_mode("error"); and the compressed reduce-scatter's step
    (efcomm.engine.scatter_step with its flag, on the group of this one rank) likewise. Records
    each host synchronisation the hooks or the step caused."""
    os.environ["EFCOMM_TOPK_SELECT"] = select
    torch.set_num_threads(1)
    dist.init_process_group("cpu:gloo,cuda:nccl", init_method=init_method, rank=rank, world_size=world_size)
    torch.cuda.set_device(0)
    from efcomm.engine import BucketInput, scatter_step
    from efcomm.methods import Worker
    from efcomm.transport import DDPTransport

    errors, calls, armed = [], [0], [False]

    def under_sync_check(fn, *args):
        if not armed[0]:
            return fn(*args)
        calls[0] += 1
        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*args)
        except RuntimeError as e:
            errors.append(str(e))
        finally:
            torch.cuda.set_sync_debug_mode(0)

    mesh = init_device_mesh("cuda", (1, 1), mesh_dim_names=("replicate", "shard"))
    for chosen in ((), ("ef21", efcomm.TopK(**COMPACT_TOP1))):
        model = sharded(mesh["shard"])
        state = efcomm.register_fsdp(
            model, *chosen, replicate_group=mesh["replicate"].get_group(), min_compress_numel=256
        )
        for unit in state.units:
            group = unit.param_group
            group._all_reduce_hook = lambda x, hook=group._all_reduce_hook: under_sync_check(hook, x)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        for step in range(6):
            armed[0] = step >= 3
            x, y = batch(gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.cuda()).reshape(-1, VOCAB), y.cuda().reshape(-1)).backward()
            opt.step()
        armed[0] = False
    state = efcomm.EFState("ef21", efcomm.TopK(**COMPACT_TOP1), dist.group.WORLD, min_compress_numel=256)
    signature = ("torch.float32", 20_000, (("w", (20_000,)),))
    for step in range(6):
        armed[0] = step >= 3
        g = torch.randn(20_000, device="cuda")
        bucket = BucketInput(g, signature, Worker(0, 1), 80_000, True)
        under_sync_check(lambda: DDPTransport(dist.group.WORLD).run_blocking(scatter_step(state, bucket)))
    torch.cuda.synchronize()
    torch.save({"errors": errors, "calls": calls[0]}, Path(result_dir) / f"rank{rank}.pt")
    shutdown()
