"""The wire model: at which world sizes and link speeds does a compressed exchange beat
DDP's dense all-reduce?

It turns a step time measured at world size 1 (where the collective is nearly free, so the
difference between two hooks is their own compute) into a predicted step time at world size
n over a link of bandwidth B (bytes per second, per rank and direction), for the two
collectives the hooks use, both as NCCL's bandwidth-optimal ring algorithms:

    all-reduce of P bytes per rank (DDP, fp16, bf16, PowerSGD):  each rank sends 2 (n-1)/n * P
    all-gather of an M-byte message per rank (efcomm):           each rank sends (n-1) * M

    predicted step = measured step (world size 1) + bytes each rank sends / B

The dense baseline is DDP's all-reduce of the whole gradient (P = D, its measured step T0); a
hook h with measured step T_h and link bytes L_h beats it where T_h + L_h / B < T0 + L_D / B,
so the two are equal at the break-even bandwidth

    B* = (L_D - L_h) / (T_h - T0)

and h wins below B* when it both saves bytes and costs compute (the usual case), at every
bandwidth when it saves bytes at no cost, never when it sends more at a cost, and above B*
when it sends more but computes less (see :func:`break_even`).

Assumptions, stated so that a reader can weigh the numbers:
  - no overlap: the whole communication time adds to the step (DDP in fact overlaps each
    bucket's collective with the rest of the backward pass, which hides more of the dense
    all-reduce than of a smaller exchange, so this model favours compression);
  - bandwidth only: no per-message latency term (a ring's 2 (n-1) or (n-1) steps of a few
    microseconds each), no congestion, every rank on a link of bandwidth B, each link at its
    quoted figure (NVLink's 900 GB/s counts both directions together);
  - every byte efcomm reports (``state.stats.bytes_sent``) is all-gathered; its buckets that
    are too small to compress are all-reduced, which for n >= 2 sends fewer bytes
    (2 (n-1)/n <= n-1), so the efcomm prediction is an upper bound;
  - the measured world-size-1 step includes DDP's (nearly free) one-rank collective.

    python -m efcomm.wire_model results/bench_ddp.json      # the tables, from a benchmark's JSON
"""

import argparse
import json
from dataclasses import dataclass
from typing import Optional

ALL_REDUCE = "all_reduce"
ALL_GATHER = "all_gather"
COLLECTIVES = (ALL_REDUCE, ALL_GATHER)


@dataclass(frozen=True)
class Link:
    """A network link: a name and its bandwidth in bytes per second."""

    name: str
    bandwidth: float


LINKS = (
    Link("NVLink 900GB/s", 900e9),
    Link("IB 400Gb/s", 400e9 / 8),
    Link("Eth 100Gb/s", 100e9 / 8),
    Link("Eth 25Gb/s", 25e9 / 8),
)
WORLD_SIZES = (8, 64, 512)


@dataclass(frozen=True)
class Exchange:
    """One hook as measured at world size 1: its collective, this rank's payload per step
    (the all-reduced buffer, or the all-gathered message) and the median step time."""

    name: str
    collective: str
    bytes_per_step: float
    step_seconds: float

    def __post_init__(self):
        if self.collective not in COLLECTIVES:
            raise ValueError(f"wire_model: collective ({self.collective!r}) must be one of {COLLECTIVES}")


@dataclass(frozen=True)
class BreakEven:
    """Where a hook's predicted step equals the dense one: ``wins`` is "below" or "above"
    ``bandwidth`` (bytes per second), or "always" / "never" (``bandwidth`` None)."""

    wins: str
    bandwidth: Optional[float] = None

    def describe(self) -> str:
        if self.bandwidth is None:
            return self.wins
        gbps = self.bandwidth * 8 / 1e9
        return f"{self.wins} {gbps:,.0f} Gb/s" if gbps >= 100 else f"{self.wins} {gbps:.3g} Gb/s"


def link_bytes(collective: str, payload: float, world: int) -> float:
    """Bytes each rank sends on its link in one ring collective of ``payload`` bytes per rank."""
    if world < 1:
        raise ValueError(f"wire_model: world ({world}) must be at least 1")
    if collective == ALL_REDUCE:
        return 2 * (world - 1) / world * payload
    if collective == ALL_GATHER:
        return (world - 1) * payload
    raise ValueError(f"wire_model: collective ({collective!r}) must be one of {COLLECTIVES}")


def communication_seconds(exchange: Exchange, world: int, bandwidth: float) -> float:
    """Time on a link of ``bandwidth`` bytes per second for one step's exchange."""
    if bandwidth <= 0:
        raise ValueError(f"wire_model: bandwidth ({bandwidth}) must be positive")
    return link_bytes(exchange.collective, exchange.bytes_per_step, world) / bandwidth


def predicted_step_seconds(exchange: Exchange, world: int, bandwidth: float) -> float:
    """Measured step time plus the communication, with no overlap."""
    return exchange.step_seconds + communication_seconds(exchange, world, bandwidth)


def break_even(hook: Exchange, dense: Exchange, world: int) -> BreakEven:
    """Where ``hook`` and ``dense`` predict the same step time: B* = saved bytes / extra time."""
    saved = link_bytes(dense.collective, dense.bytes_per_step, world) - link_bytes(
        hook.collective, hook.bytes_per_step, world
    )
    extra = hook.step_seconds - dense.step_seconds
    # hook wins where saved / B > extra, for B in (0, inf)
    if saved > 0:
        return BreakEven("below", saved / extra) if extra > 0 else BreakEven("always")
    if saved < 0:
        return BreakEven("above", saved / extra) if extra < 0 else BreakEven("never")
    return BreakEven("always") if extra < 0 else BreakEven("never")


def rows(dense: Exchange, hooks: list, worlds=WORLD_SIZES, links=LINKS) -> list[dict]:
    """One row per (world size, hook), the dense baseline first: predicted step time per link
    and the break-even bandwidth against the dense all-reduce."""
    out = []
    for world in worlds:
        for hook in [dense] + [h for h in hooks if h is not dense]:
            row = {
                "world": world,
                "hook": hook.name,
                "collective": hook.collective,
                "link_bytes": link_bytes(hook.collective, hook.bytes_per_step, world),
                "predicted_s": {link.name: predicted_step_seconds(hook, world, link.bandwidth) for link in links},
            }
            if hook is not dense:
                be = break_even(hook, dense, world)
                row["wins"], row["break_even_bandwidth"] = be.wins, be.bandwidth
            out.append(row)
    return out


def format_rows(title: str, table: list[dict], links=LINKS) -> str:
    """The rows of :func:`rows` as text, one block per world size."""
    width = max(len(r["hook"]) for r in table) + 2
    lines = []
    for world in sorted({r["world"] for r in table}):
        lines.append(f"{title}, n = {world} ranks: predicted step time, ms (measured step + communication, no overlap)")
        lines.append(
            f"{'hook':<{width}}" + "".join(f"{link.name:>16}" for link in links) + "   faster than dense all-reduce"
        )
        for r in (r for r in table if r["world"] == world):
            be = "(baseline)" if "wins" not in r else BreakEven(r["wins"], r["break_even_bandwidth"]).describe()
            times = "".join(f"{r['predicted_s'][link.name] * 1e3:>16,.1f}" for link in links)
            lines.append(f"{r['hook']:<{width}}{times}   {be}")
        lines.append("")
    return "\n".join(lines)


def exchanges_from_results(model: dict) -> tuple[Exchange, list]:
    """(dense baseline, the other hooks) from one model entry of bench_ddp.py's JSON."""
    measured = [Exchange(h["name"], h["collective"], h["bytes_per_step"], h["median_s"]) for h in model["hooks"]]
    dense = [e for e in measured if e.name == "allreduce"]
    if not dense:
        raise ValueError(f"wire_model: model {model['name']!r} has no 'allreduce' measurement to compare with")
    return dense[0], [e for e in measured if e is not dense[0]]


def report(results: dict, worlds=WORLD_SIZES, links=LINKS) -> tuple[str, list]:
    """The wire model's text and rows for every model of a bench_ddp.py result."""
    text, table = [], []
    for model in results["models"]:
        dense, hooks = exchanges_from_results(model)
        model_rows = rows(dense, hooks, worlds, links)
        for r in model_rows:
            r["model"] = model["name"]
        table += model_rows
        text.append(
            format_rows(
                f"wire model, {model['name']} ({dense.bytes_per_step / 1e6:,.1f} MB gradient, "
                f"measured step {dense.step_seconds * 1e3:,.1f} ms)",
                model_rows,
                links,
            )
        )
    return "\n".join(text), table


# ---- past one node: the hierarchical exchange (efcomm.hierarchy) ----------------------


@dataclass(frozen=True)
class Topology:
    """``nodes`` nodes of ``local`` GPUs each; NVLink inside a node, the network between."""

    nodes: int
    local: int

    @property
    def world(self) -> int:
        return self.nodes * self.local


TOPOLOGIES = (Topology(8, 8), Topology(64, 8))
NETWORKS = (LINKS[1], LINKS[2])  # InfiniBand 400 Gb/s, Ethernet 100 Gb/s
NVLINK = LINKS[0]


def hierarchical_bytes(gradient_bytes: float, message_nbytes, topology: Topology) -> dict:
    """Bytes each GPU sends per step, inside its node ("intra") and on the network ("inter"),
    for a gradient of ``gradient_bytes`` (``message_nbytes(fraction)``: the bytes of one
    compressed message of that fraction of the gradient):

      nccl          NCCL's dense all-reduce, as its hierarchical form: a reduce-scatter in the
                    node, an all-reduce of each GPU's 1/L shard across the N nodes, an
                    all-gather in the node (NCCL's multi-rail rings approach the same
                    network bytes: 2 (N-1)/N D/L per GPU);
      efcomm flat   one all-gather of the whole gradient's message among all n GPUs:
                    (n-1) M(D) per GPU, counted as network bytes (an upper bound: a ring's
                    hops inside a node take NVLink);
      efcomm hier   efcomm.hierarchy: the node's reduce-scatter and all-gather (dense, NVLink),
                    and an all-gather of each shard's message among the N nodes: (N-1) M(D/L).
    """
    n, nodes, local, d = topology.world, topology.nodes, topology.local, gradient_bytes
    node_dense = 2 * (local - 1) / local * d  # reduce-scatter + all-gather inside the node
    return {
        "nccl": {"intra": node_dense, "inter": 2 * (nodes - 1) / nodes * d / local},
        "efcomm flat": {"intra": 0.0, "inter": (n - 1) * message_nbytes(1.0)},
        "efcomm hier": {"intra": node_dense, "inter": (nodes - 1) * message_nbytes(1.0 / local)},
    }


def hierarchy_rows(
    gradient_bytes: float,
    message_nbytes,
    compute_overhead_s: float = 0.0,
    topologies=TOPOLOGIES,
    networks=NETWORKS,
    nvlink=NVLINK,
) -> list[dict]:
    """Per topology and exchange: the bytes of :func:`hierarchical_bytes` and the predicted
    communication time per network (intra bytes over NVLink plus inter bytes over the
    network, no overlap), plus ``compute_overhead_s`` for the efcomm exchanges."""
    out = []
    for topology in topologies:
        for name, sent in hierarchical_bytes(gradient_bytes, message_nbytes, topology).items():
            overhead = 0.0 if name == "nccl" else compute_overhead_s
            out.append(
                {
                    "topology": f"{topology.nodes}x{topology.local}",
                    "exchange": name,
                    "intra_bytes": sent["intra"],
                    "inter_bytes": sent["inter"],
                    "predicted_s": {
                        net.name: overhead + sent["intra"] / nvlink.bandwidth + sent["inter"] / net.bandwidth
                        for net in networks
                    },
                }
            )
    return out


def format_hierarchy(title: str, table: list[dict], networks=NETWORKS, baseline: str = "nccl") -> str:
    lines = [
        title,
        f"{'nodes x GPUs':<14}{'exchange':<14}{'network MB/GPU':>16}{'vs ' + baseline:>9}"
        + "".join(f"{net.name + ' ms':>18}" for net in networks),
    ]
    for r in table:
        dense = next(x for x in table if x["topology"] == r["topology"] and x["exchange"] == baseline)
        ratio = dense["inter_bytes"] / r["inter_bytes"] if r["inter_bytes"] else float("inf")
        times = "".join(f"{r['predicted_s'][net.name] * 1e3:>18,.2f}" for net in networks)
        lines.append(f"{r['topology']:<14}{r['exchange']:<14}{r['inter_bytes'] / 1e6:>16,.2f}{ratio:>8.1f}x{times}")
    return "\n".join(lines)


def hierarchy_report(
    parameters: float, bucket_numel: int = 6_553_600, ratio: float = 0.01, compute_overhead_s: float = 0.0
) -> str:
    """The hierarchy table for a float32 model of ``parameters`` parameters in buckets of
    ``bucket_numel`` entries, Top-``ratio`` messages in two formats: float32 values with int32
    indices, and bfloat16 values with 16-bit indices (efcomm.TopK(value_dtype=torch.bfloat16,
    index_bits=16)); message sizes from the op layer (efcomm.ops.message_nbytes)."""
    import math

    import torch

    from .compressors import TopK

    def per_bucket(compressor):
        def message_nbytes(fraction):
            buckets = math.ceil(parameters / bucket_numel)
            shard = max(1, math.ceil(fraction * bucket_numel))
            return buckets * compressor.message_nbytes(shard, torch.float32)

        return message_nbytes

    text = []
    for label, compressor in (
        ("fp32 values, int32 indices", TopK(ratio)),
        ("bf16 values, 16-bit indices", TopK(ratio, value_dtype=torch.bfloat16, index_bits=16)),
    ):
        table = hierarchy_rows(4 * parameters, per_bucket(compressor), compute_overhead_s)
        title = (
            f"hierarchical exchange, {parameters / 1e6:,.0f}M float32 parameters, Top-{ratio:g} with {label}: "
            "network bytes per GPU per step and predicted communication time (no overlap)"
        )
        text.append(format_hierarchy(title, table))
    return "\n\n".join(text)


# ---- FSDP2 past one node: native HSDP against efcomm over HSDP (efcomm.fsdp) ----------


def hsdp_inter_bytes(shard_numels, compressor, dtype, min_compress_numel: int = 1024) -> int:
    """The payload this rank contributes per step to efcomm's exchange between replicas
    (``stats.inter_node_bytes`` per step past the dense start), for FSDP units whose shards
    have ``shard_numels`` entries of ``dtype`` (the reduce dtype): a shard's compressed
    message, or the shard itself where it is too small to compress or its message is not
    smaller (efcomm.EFState.compresses)."""
    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for numel in shard_numels:
        dense = numel * itemsize
        message = compressor.message_nbytes(numel, dtype)
        total += message if numel >= min_compress_numel and message < dense else dense
    return total


def hsdp_rows(
    gradient_bytes: float,
    message_nbytes,
    compute_s: float,
    efcomm_overhead_s: float = 0.0,
    topologies=TOPOLOGIES,
    networks=NETWORKS,
    nvlink=NVLINK,
) -> list[dict]:
    """Per topology (nodes x GPUs per node, FSDP sharding inside the node): bytes per GPU and
    step, and the predicted step time (``compute_s`` plus the communication, no overlap) of

      hsdp          FSDP2's native HSDP: the reduce-scatter in the node ((L-1)/L D), then the
                    all-reduce of the GPU's shard among the N replicas (2 (N-1)/N D/L);
      efcomm hsdp   efcomm.register_fsdp: the same reduce-scatter, then an all-gather of the
                    shard's compressed message among the replicas ((N-1) M(D/L)), plus
                    ``efcomm_overhead_s`` (the encode and decode).

    The parameter all-gathers are FSDP's own and the same in both: left out. ``message_nbytes``
    (fraction) gives the bytes of one message of that fraction of the gradient."""
    out = []
    for topology in topologies:
        nodes, local = topology.nodes, topology.local
        intra = (local - 1) / local * gradient_bytes
        exchanges = {
            "hsdp": (2 * (nodes - 1) / nodes * gradient_bytes / local, 0.0),
            "efcomm hsdp": ((nodes - 1) * message_nbytes(1.0 / local), efcomm_overhead_s),
        }
        for name, (inter, overhead) in exchanges.items():
            out.append(
                {
                    "topology": f"{nodes}x{local}",
                    "exchange": name,
                    "intra_bytes": intra,
                    "inter_bytes": inter,
                    "predicted_s": {
                        net.name: compute_s + overhead + intra / nvlink.bandwidth + inter / net.bandwidth
                        for net in networks
                    },
                }
            )
    return out


def hsdp_report(
    parameters: float,
    compute_s: float,
    efcomm_overhead_s: float = 0.0,
    unit_numel: int = 6_553_600,
    ratio: float = 0.01,
) -> str:
    """The HSDP table for a float32 model of ``parameters`` parameters in FSDP units of
    ``unit_numel`` entries, EF21 + Top-``ratio`` with bf16 values and 16-bit offsets, from a
    measured compute time per step (and efcomm's measured overhead)."""
    import math

    import torch

    from .compressors import TopK

    compressor = TopK(ratio, value_dtype=torch.bfloat16, index_bits=16)

    def message_nbytes(fraction):
        units = math.ceil(parameters / unit_numel)
        return units * compressor.message_nbytes(max(1, math.ceil(fraction * unit_numel)), torch.float32)

    table = hsdp_rows(4 * parameters, message_nbytes, compute_s, efcomm_overhead_s)
    title = (
        f"FSDP2 over nodes, {parameters / 1e6:,.0f}M float32 parameters, units of {unit_numel:,} entries, "
        f"EF21 + Top-{ratio:g} (bf16 values, 16-bit offsets); compute {compute_s * 1e3:,.1f} ms/step, "
        f"efcomm overhead {efcomm_overhead_s * 1e3:,.1f} ms/step: predicted step time (no overlap)"
    )
    return format_hierarchy(title, table, baseline="hsdp")


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", help="the JSON file written by benchmarks/bench_ddp.py")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=list(WORLD_SIZES))
    parser.add_argument(
        "--hierarchy",
        type=float,
        metavar="PARAMETERS",
        help="print the hierarchical exchange's table for a model of this many float32 parameters "
        "(e.g. 124e6 for GPT-2 small) instead",
    )
    parser.add_argument("--ratio", type=float, default=0.01, help="Top-k ratio of the hierarchy table")
    parser.add_argument(
        "--hsdp",
        type=float,
        metavar="PARAMETERS",
        help="print FSDP2's native HSDP against efcomm over HSDP (efcomm.register_fsdp) for a model of this many "
        "float32 parameters instead, from --compute-ms and --overhead-ms",
    )
    parser.add_argument("--compute-ms", type=float, default=0.0, help="measured step time without the network")
    parser.add_argument("--overhead-ms", type=float, default=0.0, help="efcomm's measured encode/decode per step")
    args = parser.parse_args(argv)
    if args.hsdp is not None:
        if not args.hsdp >= 1 or not 0 < args.ratio <= 1 or args.compute_ms < 0 or args.overhead_ms < 0:
            parser.error(
                f"argument --hsdp ({args.hsdp}) must be at least 1, --ratio ({args.ratio}) in (0, 1], "
                f"--compute-ms ({args.compute_ms}) and --overhead-ms ({args.overhead_ms}) at least 0"
            )
        print(hsdp_report(args.hsdp, args.compute_ms / 1e3, args.overhead_ms / 1e3, ratio=args.ratio))
        return
    if args.hierarchy is not None:
        if not args.hierarchy >= 1 or not 0 < args.ratio <= 1:
            parser.error(
                f"argument --hierarchy ({args.hierarchy}) must be at least 1 and --ratio ({args.ratio}) in (0, 1]"
            )
        print(hierarchy_report(args.hierarchy, ratio=args.ratio))
        return
    if args.results is None:
        parser.error("the results JSON (or --hierarchy PARAMETERS) is required")
    if any(n < 1 for n in args.world_sizes):
        parser.error(f"argument --world-sizes: every world size must be at least 1, got {args.world_sizes}")
    with open(args.results) as f:
        results = json.load(f)
    text, _ = report(results, args.world_sizes)
    print(text)


if __name__ == "__main__":
    main()
