"""benchmarks/convergence.py and efcomm.lm: the --tiny run end to end (one launch for every
kind of run), its byte counts against the hooks' own, and the corpus's split."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efcomm import lm

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import convergence  # noqa: E402

TINY_RUNS = ("allreduce", "fp16", "powersgd:1", "default", "ef21:topk:0.1", "ef:topk:0.1:compact", "ef21-sgdm:topk:0.1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("convergence")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "convergence.py"), "--tiny", "--quiet", "--out", str(out), "--steps", "10"]
        + ["--runs", *TINY_RUNS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "convergence.json").read_text()), done.stdout, out


def test_every_run_has_its_record_and_the_table_and_figure_are_written(tiny):
    record, stdout, out = tiny
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every run with seed 0; the dense run and the default again with seeds 1 and 2.
    assert [(r["name"], r["seed"]) for r in record["runs"]] == [(name, 0) for name in TINY_RUNS] + [
        (name, seed) for seed in (1, 2) for name in ("allreduce", "default")
    ]
    summary = {row["name"]: row for row in record["summary"]}
    assert summary["default"]["seeds"] == [0, 1, 2] and summary["ef21:topk:0.1"]["seeds"] == [0]
    default_losses = [r["final_val_loss"] for r in record["runs"] if r["name"] == "default"]
    assert summary["default"]["final_val_loss"] == pytest.approx(sum(default_losses) / 3)
    assert summary["default"]["spread"] == pytest.approx(max(default_losses) - min(default_losses))
    assert summary["default"]["spread"] > 0
    assert record["corpus"]["sha256"] in lm.load_corpus()["sha256"] and record["corpus"]["files"] > 50
    for r in record["runs"]:
        assert set(r) >= {
            "name",
            "final_val_loss",
            "bytes_per_rank_per_step",
            "dense_bytes_per_rank_per_step",
            "val_curve",
        }
        steps = [s for s, _ in r["val_curve"]]
        assert steps == [0, 4, 8, 10] and all(math.isfinite(v) for _, v in r["val_curve"])
        assert r["final_val_loss"] == r["val_curve"][-1][1]
        assert [s for s, _ in r["bytes_curve"]] == steps and r["bytes_curve"][0][1] == 0
        assert r["bytes_curve"][-1][1] == pytest.approx(r["bytes_per_rank_per_step"] * 10)
        assert f"| 10    | {r['name']}" in stdout
    # Every run of a seed starts from the same model and sees the same batches.
    assert len({r["val_curve"][0][1] for r in record["runs"] if r["seed"] == 0}) == 1
    assert len({r["val_curve"][1][1] for r in record["runs"] if r["optimizer"] == "adamw"}) > 1
    assert [r["optimizer"] for r in record["runs"]].count("sgd") == 1  # ef21-sgdm takes plain SGD
    dense = [r for r in record["runs"] if r["name"] == "allreduce"]
    assert dense[0]["val_curve"][0][1] != dense[1]["val_curve"][0][1]  # another seed, another model


def test_bytes_per_step_follow_what_each_hook_sends(tiny):
    record, _, _ = tiny
    runs = {r["name"]: r for r in record["runs"] if r["seed"] == 0}
    dense = runs["allreduce"]["dense_bytes_per_rank_per_step"]
    assert dense == 4 * sum(p.numel() for p in lm.ByteGPT(lm.LMConfig(**lm.TINY)).parameters())
    assert runs["allreduce"]["bytes_per_rank_per_step"] == dense
    assert runs["fp16"]["bytes_per_rank_per_step"] == dense / 2
    # PowerSGD all-reduces densely before its start step (max(2, 10 // 10) = 2): counted.
    assert dense * 2 / 10 < runs["powersgd:1"]["bytes_per_rank_per_step"] < dense
    # EF21: one dense start, then 8-byte entries (value, index) for k = ceil(0.1 d) of each bucket.
    ef21 = runs["ef21:topk:0.1"]["bytes_per_rank_per_step"]
    numel = dense // 4
    assert dense / 10 + 9 * 8 * math.ceil(0.1 * numel) / 10 == pytest.approx(ef21, rel=0.02)
    # Classic EF starts compressed; the compact form sends about 4 bytes per entry.
    assert runs["ef:topk:0.1:compact"]["bytes_per_rank_per_step"] == pytest.approx(4 * 0.1 * numel, rel=0.05)


def test_the_corpus_splits_by_file_deterministically(tmp_path):
    for i in range(40):
        (tmp_path / f"part{i:02d}.txt").write_text(f"text file {i}\n" * 50)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    first, second = lm.load_corpus(str(tmp_path)), lm.load_corpus(str(tmp_path))
    assert first["sha256"] == second["sha256"] and torch.equal(first["val"], second["val"])
    assert first["files"] == 40  # the binary file and the non-UTF-8 one are skipped
    text = sum(len(f"text file {i}\n") * 50 for i in range(40))
    assert first["train"].numel() + first["val"].numel() == text + 40 - 2  # joined by newlines
    assert 0 < first["val"].numel() < first["train"].numel()
    with pytest.raises(ValueError, match=r"corpus \('/nonexistent'\) is not a folder"):
        lm.load_corpus("/nonexistent")


def test_run_names_are_checked_before_any_process_starts(capsys):
    with pytest.raises(SystemExit):
        convergence.parse_args(["--runs", "ef21:topk:2"])
    assert "ratio '2' must be a number in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convergence.parse_args(["--runs", "ef21-sgdm[eta=7]:topk:0.01"])
    assert "eta (7.0) must be in (0, 1]" in capsys.readouterr().err
    spec = convergence.run_spec("adamw/ef21-sgdm[eta=0.05]:topk:0.01:compact")
    assert spec.method.eta == 0.05 and spec.compressor.value_dtype == torch.bfloat16
    assert not convergence.uses_sgd("adamw/ef21-sgdm:topk:0.01", convergence.run_spec("adamw/ef21-sgdm:topk:0.01"))
