"""The demo: its command line (every usage error is a clear argparse message, exit status 2,
checked before any process starts), the compressed run it picks, its table, and one tiny run
end to end."""

import math
import re
import subprocess
import sys

import pytest
import torch

from efcomm import EFState, TopK, demo, lm


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--steps", "0"], r"argument --steps: must be positive; got 0"),
        (["--ratio", "2"], r"argument --ratio: must be in \(0, 1\]; got 2"),
        (["--ratio", "x"], r"argument --ratio: invalid _ratio value: 'x'"),
        (["--world-size", "0"], r"argument --world-size: must be positive; got 0"),
        (["--lr", "-1"], r"argument --lr: must be positive; got -1"),
        (["--sgd-lr", "0"], r"argument --sgd-lr: must be positive; got 0"),
        (["--method", "ef42"], r"argument --method: invalid choice: 'ef42'"),
        (["--compressor", "zip"], r"argument --compressor: invalid choice: 'zip'"),
    ],
)
def test_usage_errors_name_the_argument_and_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m efcomm.demo")
    assert re.search(message, err), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without GPUs")
def test_nccl_without_gpus_says_so(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--backend", "nccl", "--world-size", "2"])
    assert "--backend nccl needs CUDA devices and this machine has none; use --backend gloo" in capsys.readouterr().err


def test_runs_are_labelled_by_what_they_send():
    assert demo.run_label("ef21", "topk", 0.1) == "ef21 + topk 0.1"
    assert demo.run_label("ef21", "int8", 0.1) == "ef21 + int8"
    assert demo.run_label("lag", "topk", 0.1) == "lag (dense differences, when triggered)"
    assert demo.run_label("adacgd", "topk", 0.1) == "adacgd (its own Top-k ladder)"
    args = demo.parse_args(["--method", "ef21", "--compressor", "qsgd", "--backend", "gloo"])
    assert args.compressor_obj.alpha(1024) is not None  # scaled: contractive for EF21
    assert demo.short_repr(TopK(0.05)) == "TopK(ratio=0.05)"
    assert demo.short_repr(TopK(0.01, value_dtype=torch.bfloat16, index_bits=16)) == (
        "TopK(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)"
    )


def test_the_compressed_run_is_efcomms_default_unless_told_otherwise():
    default = EFState()
    args = demo.parse_args(["--backend", "gloo"])
    assert args.default_run and args.method == default.method and args.compressor_obj == default.compressor
    assert args.label == f"efcomm.register default: {default.method} + {demo.short_repr(default.compressor)}"
    # --ratio alone: efcomm's default method and compressor at that ratio.
    args = demo.parse_args(["--ratio", "0.05", "--backend", "gloo"])
    assert not args.default_run and args.method == default.method
    assert type(args.compressor_obj) is type(default.compressor) and args.compressor_obj.ratio == 0.05
    # --compressor alone: efcomm's default ratio.
    args = demo.parse_args(["--compressor", "randk", "--backend", "gloo"])
    assert args.compressor_obj.ratio == default.compressor.ratio and args.label.startswith(f"{default.method} + randk")
    # Methods with their own momentum train with plain SGD; the others with AdamW.
    assert demo.parse_args(["--method", "ef21-sgdm", "--backend", "gloo"]).sgd
    assert not demo.parse_args(["--method", "ef", "--backend", "gloo"]).sgd


def test_table_rows_give_the_gap_and_the_compression():
    dense = {"final_val_loss": 2.0, "bytes_per_rank_per_step": 1000.0}
    compressed = {"final_val_loss": 2.1, "bytes_per_rank_per_step": 12.5}
    updates = {"final_val_loss": 1.9, "bytes_per_rank_per_step": 10.0}
    rows = demo.table_rows(dense, [("updates", updates), ("ef21 + TopK(ratio=0.01)", compressed)], steps=40)
    assert rows == [
        ("dense all-reduce", "2.0000", "-", "40,000", "1.0x"),
        ("updates", "1.9000", "-5.00%", "400", "100.0x"),
        ("ef21 + TopK(ratio=0.01)", "2.1000", "+5.00%", "500", "80.0x"),
    ]
    table = demo._table(rows).splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")] == list(demo.HEADER)
    assert len(table) == 5 and table[4].startswith("| ef21 + TopK(ratio=0.01) | 2.1000 ")


def test_cpu_code_paths_are_pinned_unless_the_environment_says_otherwise():
    environ = {"PATH": "/bin"}
    demo.pin_cpu_paths(environ)
    assert environ == {"PATH": "/bin", "MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    environ = {"MKL_CBWR": "AUTO"}
    demo.pin_cpu_paths(environ)
    assert environ == {"MKL_CBWR": "AUTO", "ATEN_CPU_CAPABILITY": "avx2"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_tiny_run_end_to_end():
    """python -m efcomm.demo --tiny: the corpus line first, then the three runs' table, whose
    bytes are the dense gradient's, what compress_updates sent (one exchange every 3 steps) and
    what efcomm's default hook sent."""
    steps = 6
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "efcomm.demo",
            "--tiny",
            "--steps",
            str(steps),
            "--every",
            "3",
            "--no-progress",
            "--backend",
            "gloo",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("corpus: ") and "sha256" in lines[0]
    assert lines[1].startswith(f"efcomm demo: 2 ranks over gloo, {steps} steps")
    table = [line for line in lines if line.startswith("| ")]
    assert _cells(table[0]) == list(demo.HEADER) and len(table) == 4
    dense, updates, compressed = _cells(table[1]), _cells(table[2]), _cells(table[3])
    params = sum(p.numel() for p in lm.ByteGPT(lm.LMConfig(**lm.TINY)).parameters())
    assert dense[0] == "dense all-reduce" and int(dense[3].replace(",", "")) == params * 4 * steps
    assert compressed[0] == demo.default_label()
    dense_loss, loss = float(dense[1]), float(compressed[1])
    assert dense_loss < math.log(256) - 0.05  # it learned (an untrained model predicts about uniformly)
    assert math.isfinite(loss) and compressed[2] == f"{loss / dense_loss - 1.0:+.2%}"
    sent = int(compressed[3].replace(",", ""))
    assert 0 < sent < params * 4 * steps and compressed[4] == f"{params * 4 * steps / sent:.1f}x"
    assert updates[0] == demo.updates_label(3) and math.isfinite(float(updates[1]))
    # compress_updates' default, ScaledSign(block=1024), as kernels/wire_layout.h lays it out: a
    # float32 scale per 1024-entry block, then 32 words of 1-bit codes per block (the last one
    # padded); 2 exchanges in 6 steps.
    blocks = math.ceil(params / 1024)
    assert int(updates[3].replace(",", "")) == 2 * (4 * blocks + 4 * 32 * blocks)
