"""The demo's command line: every usage error is a clear argparse message (exit status 2),
checked before any process starts."""

import re

import pytest
import torch

from efcomm import demo


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--steps", "0"], r"argument --steps: must be positive; got 0"),
        (["--ratio", "2"], r"argument --ratio: must be in \(0, 1\]; got 2"),
        (["--ratio", "x"], r"argument --ratio: invalid _ratio value: 'x'"),
        (["--world-size", "0"], r"argument --world-size: must be positive; got 0"),
        (["--lr", "-1"], r"argument --lr: must be positive; got -1"),
        (["--method", "ef42"], r"argument --method: invalid choice: 'ef42'"),
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
