"""benchmarks/bench_ddp.py: the CPU --tiny run end to end, its arguments, and its byte counts
against the bytes the hooks actually hand to the collectives."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from efcomm import wire_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_ddp  # noqa: E402
from ddp_hooks import DEFAULT_HOOKS, ByteMeter, parse_hook  # noqa: E402
from ddp_models import make_workload  # noqa: E402


def run_benchmark(out: Path, *extra: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_ddp.py"), "--device", "cpu", "--tiny", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "bench_ddp.json").read_text()), done.stdout


def test_tiny_cpu_run(tmp_path):
    results, stdout = run_benchmark(tmp_path)
    assert (tmp_path / "bench_ddp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["device"] == "CPU" and results["world_size"] == 1 and results["backend"] == "gloo"
    assert [m["name"] for m in results["models"]] == ["gpt2", "resnet50"]
    for model in results["models"]:
        hooks = {h["name"]: h for h in model["hooks"]}
        assert list(hooks) == list(DEFAULT_HOOKS)
        dense = model["dense_bytes"]
        assert dense == 4 * model["parameters"]  # float32 gradients, shared parameters counted once
        for h in hooks.values():
            times = h["step_times_s"]
            assert len(times) == results["steps"]
            assert all(math.isfinite(t) and t > 0 for t in times)
            assert h["min_s"] <= h["q1_s"] <= h["median_s"] <= h["q3_s"] <= h["max_s"]
            assert h["syncs_per_step"] is None  # n/a on CPU
        assert hooks["allreduce"]["bytes_per_step"] == dense
        assert hooks["fp16"]["bytes_per_step"] == hooks["bf16"]["bytes_per_step"] == dense / 2
        assert 0 < hooks["powersgd:1"]["bytes_per_step"] < hooks["powersgd:4"]["bytes_per_step"] < dense
        efcomm_hooks = [h for h in hooks.values() if h["kind"] == "efcomm"]
        assert len(efcomm_hooks) == 5
        for h in efcomm_hooks:
            assert 0 < h["bytes_per_step"] < dense, h["name"]
        # Top-k 1%: k values and k int32 indices per bucket, about 2% of the float32 buffer
        assert hooks["ef21:topk:0.01"]["dense_fraction"] < 0.03
        assert hooks["ef21:int8"]["dense_fraction"] < 0.3  # 8 bits + a scale per 256 entries
    wire_rows = results["wire_model"]["rows"]
    assert len(wire_rows) == 2 * len(wire_model.WORLD_SIZES) * len(DEFAULT_HOOKS)
    for row in wire_rows:
        assert set(row["predicted_s"]) == {link.name for link in wire_model.LINKS}
    for name in list(DEFAULT_HOOKS) + ["n/a", "baseline", "wire model, gpt2", "wire model, resnet50", "n = 512 ranks"]:
        assert name in stdout, name


def test_spawned_ranks_and_a_chosen_hook_list(tmp_path):
    results, stdout = run_benchmark(
        tmp_path,
        "--world-size",
        "2",
        "--models",
        "gpt2",
        "--warmup",
        "2",
        "--steps",
        "3",
        "--hooks",
        "ef21:topk:0.05",
        "powersgd:2",
    )
    assert results["world_size"] == 2
    hooks = results["models"][0]["hooks"]
    assert [h["name"] for h in hooks] == ["allreduce", "ef21:topk:0.05", "powersgd:2"]  # the baseline comes first
    topk = hooks[1]
    assert topk["label"].startswith("efcomm ef21 + TopK(ratio=0.05")
    assert 0.05 < topk["dense_fraction"] < 0.15  # k = 5% of each bucket, values and indices
    assert "one bucket at a time on gloo" in stdout


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--hooks", "ef21:topk:2"], ["--hooks", "'ef21:topk:2'", "ratio '2'"]),
        (["--hooks", "ef21:bogus"], ["--hooks", "compressor 'bogus'"]),
        (["--hooks", "nomethod:topk"], ["--hooks", "method 'nomethod'"]),
        (["--hooks", "ef21:int8:0.1"], ["--hooks", "int8 takes no ratio"]),
        (["--hooks", "ef21:randk:0.01:threshold"], ["--hooks", "threshold"]),
        (["--hooks", "none:topk:0.01"], ["--hooks", "'none:topk:0.01'"]),  # efcomm's own check: biased
        (["--hooks", "powersgd:0"], ["--hooks", "'powersgd:0'"]),
        (["--hooks", "fp16", "fp16"], ["--hooks", "['fp16']", "more than once"]),
        (["--warmup", "1"], ["--warmup", "1"]),
        (["--steps", "0"], ["--steps", "'0'"]),
        (["--world-size", "-2"], ["--world-size", "'-2'"]),
        (["--bucket-cap-mb", "0"], ["--bucket-cap-mb", "'0'"]),
        (["--models", "vgg"], ["--models", "'vgg'"]),
        (["--device", "cpu", "--backend", "nccl"], ["--backend", "'nccl'"]),
    ],
)
def test_bad_arguments_name_the_argument_and_value(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_ddp.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for name in names:
        assert name in err, (name, err)


def test_defaults():
    args = bench_ddp.parse_args(["--device", "cpu", "--tiny"])
    assert [h.name for h in args.hooks] == list(DEFAULT_HOOKS)
    assert (args.warmup, args.steps, args.backend) == (3, 8, "gloo")
    args = bench_ddp.parse_args(["--device", "cpu", "--hooks", "ef21:topk:0.01:threshold", "ef21:qsgd:scaled"])
    assert [h.name for h in args.hooks] == ["allreduce", "ef21:topk:0.01:threshold", "ef21:qsgd:scaled"]
    assert args.hooks[1].compressor.threshold is True
    assert (args.warmup, args.steps, args.bucket_cap_mb) == (5, 30, 25.0)
    side = bench_ddp.parse_args(["--device", "cpu", "--hooks", "ef21:int8:side", "ef21:topk:0.02:threshold:side"]).hooks
    assert [(h.side_stream, h.label().endswith(", side stream")) for h in side] == [
        (False, False),
        (True, True),
        (True, True),
    ]
    assert side[2].compressor.threshold is True and side[2].compressor.ratio == 0.02


def _counting(monkeypatch, name: str, counts: list) -> None:
    """Counts the bytes of the tensor handed to torch.distributed.<name> (its input)."""
    original = getattr(dist, name)

    def counted(*args, **kwargs):
        tensor = args[1] if name == "all_gather_into_tensor" else args[0]
        counts.append(tensor.numel() * tensor.element_size())
        return original(*args, **kwargs)

    monkeypatch.setattr(dist, name, counted)


@pytest.mark.parametrize("spec", ["fp16", "bf16", "powersgd:1", "powersgd:4", "ef21:topk:0.01", "ef21:int8"])
def test_bytes_per_step_are_what_the_hooks_hand_to_the_collectives(spec, monkeypatch):
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        workload = make_workload("gpt2", torch.device("cpu"), tiny=True)
        ddp = DistributedDataParallel(workload.model, bucket_cap_mb=0.05)
        meter = ByteMeter(parse_hook(spec), ddp)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-4)
        for _ in range(2):  # DDP's bucket rebuild, efcomm's dense start, PowerSGD's uncompressed steps
            bench_ddp.train_step(ddp, optimizer, workload, workload.batches[0], False)
        meter.start()
        counts = []
        _counting(monkeypatch, "all_reduce", counts)
        _counting(monkeypatch, "all_gather_into_tensor", counts)
        for _ in range(3):
            bench_ddp.train_step(ddp, optimizer, workload, workload.batches[0], False)
        assert len(counts) > 1  # several buckets
        assert meter.bytes_per_step(3) == pytest.approx(sum(counts) / 3)
    finally:
        dist.destroy_process_group()
