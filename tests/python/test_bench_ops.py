"""benchmarks/bench_ops.py as a functional run on the CPU: every op's row, with its bound, the
copy beside it and (CPU: none) launches; the decode's bound in 32-byte sectors."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_cpu_functional_run(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_ops.py"),
            "--device",
            "cpu",
            "--sizes",
            "3000",
            "--ratios",
            "0.01",
            "--dtypes",
            "float32",
            "--world",
            "2",
            "--min-run-time",
            "0.001",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads((tmp_path / "bench_ops.json").read_text())["rows"]
    ops = {r["op"] for r in rows}
    for select in ("", "_radix2"):
        assert {
            f"topk{select}",
            f"ef21_encode{select}",
            f"topk_threshold{select}",
            f"ef21_encode_threshold{select}",
        } <= ops
    assert {"topk_sort_path", "decode_n2", "randk_window", "randk_uniform"} <= ops
    for name in ("qsgd4", "natural", "sign", "int8", "fp8", "int4"):
        assert {f"{name}_encode", f"{name}_ef21", f"{name}_decode_n2"} <= ops
    for r in rows:
        assert r["bound_bytes"] > 0 and r["seconds"] > 0 and r["copy_seconds"] > 0 and r["launches"] is None, r
    decode = next(r for r in rows if r["op"] == "decode_n2")
    assert decode["bound_bytes"] >= decode["entry_bound_bytes"]  # whole sectors, at least the entries
    assert (tmp_path / "bench_ops.png").exists()
