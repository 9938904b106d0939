"""What register_fsdp must do, recomputed by hand for the FSDP tests: the units' shard sizes and
message bytes from the model's parameter shapes, and what each unit's hook must leave from what
every replica's hook received (recorded by fsdp_workers.record_hooks). Plain torch, independent
of efcomm's engine, ops, compressors and wire layouts; the Top-k selection is
reference.topk_indices and the decode rule that of method_reference (acc = 0; acc += v_j in
rank order; c = acc * float32(1/n); out = 0 + c where some message carries the entry)."""

import math

import torch
from reference import topk_indices

F32 = torch.float32


def unit_shapes(model) -> dict:
    """{unit path: [parameter shapes, in order]} of the tests' transformer: each block is a
    unit, the root holds the rest."""
    units: dict = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        unit = ".".join(parts[:2]) if parts[0] == "blocks" else "<root>"
        units.setdefault(unit, []).append(tuple(p.shape))
    return units


def shard_numel(shapes: list, shards: int) -> int:
    """Entries of one rank's shard of a unit: FSDP2 cuts each parameter's dim 0 in chunks of
    ceil(d0 / shards) rows (the last ones padded)."""
    return sum(math.ceil(s[0] / shards) * math.prod(s[1:]) for s in shapes)


def align4(n: int) -> int:
    return (n + 3) // 4 * 4


def topk_k(ratio: float, numel: int) -> int:
    return max(1, min(numel, math.ceil(ratio * numel)))


def compact_topk_nbytes(numel: int, ratio: float, value_size: int = 2) -> int:
    """Top-k's compact message: a 4-byte count per 65536 entries, k values, k 16-bit offsets,
    each part padded to 4 bytes (kernels/wire_layout.h's description)."""
    k = topk_k(ratio, numel)
    return 4 * math.ceil(numel / 65536) + align4(k * value_size) + align4(2 * k)


def sparse_topk_nbytes(numel: int, ratio: float, value_size: int = 4) -> int:
    """Top-k's plain message: k values padded to 4 bytes, k int32 indices."""
    k = topk_k(ratio, numel)
    return align4(k * value_size) + 4 * k


def expected_hook_outputs(
    calls_by_replica: list, ratio: float, value_dtype=None, dense_steps: int = 0, factor: int = 1
) -> dict:
    """{unit: [what its hook must leave at each call]} for classic EF with Top-k (``ratio``,
    values rounded to ``value_dtype``) in float32 state, from every replica's recorded calls
    (``calls_by_replica``, replica order; the hooks of one shard). A call FSDP made without the
    exchange (set_requires_all_reduce(False)) leaves zeros and keeps its shard for the next;
    steps below ``dense_steps`` are the plain mean; ``factor``: what the hook multiplies by
    (the number of replicas under set_gradient_divide_factor)."""
    replicas = len(calls_by_replica)
    units = sorted({c["unit"] for c in calls_by_replica[0]})
    out = {}
    for unit in units:
        per_replica = [[c for c in calls if c["unit"] == unit] for calls in calls_by_replica]
        assert len({len(c) for c in per_replica}) == 1, "the replicas' hooks ran unequally often"
        errors, pending, expected = [None] * replicas, [None] * replicas, []
        for i in range(len(per_replica[0])):
            calls = [c[i] for c in per_replica]
            assert len({(c["exchanged"], c["step"]) for c in calls}) == 1
            received = [c["in"] for c in calls]
            if not calls[0]["exchanged"]:
                pending = [x.clone() if p is None else p + x for p, x in zip(pending, received)]
                expected.append(torch.zeros_like(received[0]))
                continue
            received = [x if p is None else x + p for x, p in zip(received, pending)]
            pending = [None] * replicas
            g = [x.to(F32) for x in received]
            if calls[0]["step"] < dense_steps:
                mean = g[0] / replicas
                for x in g[1:]:
                    mean = mean + x / replicas
            else:
                k = topk_k(ratio, g[0].numel())
                acc = torch.zeros_like(g[0])
                carried = torch.zeros(g[0].numel(), dtype=torch.bool)
                for r in range(replicas):
                    p = g[r] if errors[r] is None else errors[r] + g[r]
                    idx = topk_indices(p, k)
                    sent = p[idx] if value_dtype is None else p[idx].to(value_dtype).to(F32)
                    errors[r] = p.clone()
                    errors[r][idx] = p[idx] - sent
                    acc[idx] = acc[idx] + sent
                    carried[idx] = True
                mean = torch.where(carried, acc * torch.tensor(1.0 / replicas, dtype=F32), torch.zeros_like(acc))
            left = mean.to(received[0].dtype)
            expected.append(left * factor if factor != 1 else left)
        out[unit] = expected
    return out


def assemble(buckets_by_shard: list, name: str) -> dict:
    """{unit path: {parameter name: its full flat tensor}} of the tensor ``name`` of every unit,
    from the shards' saved buckets ({layout: {tensor name: tensor}}, shard order), cutting each
    shard's tensor by the parameters of its layout (dim-0 chunks of ceil(d0 / shards) rows)."""
    shards = len(buckets_by_shard)
    full: dict = {}
    for s, buckets in enumerate(buckets_by_shard):
        for (_, _, params), tensors in buckets.items():
            unit = next(value[0] for key, value in params if key == "#fsdp")
            offset = 0
            for pname, shape in (p for p in params if not p[0].startswith("#")):
                d0, row = shape[0], math.prod(shape[1:])
                chunk = math.ceil(d0 / shards)
                valid = max(0, min(chunk, d0 - s * chunk))
                piece = tensors[name][offset : offset + valid * row]
                full.setdefault(unit, {}).setdefault(pname, []).append(piece)
                offset += chunk * row
    return {unit: {p: torch.cat(pieces) for p, pieces in params.items()} for unit, params in full.items()}
