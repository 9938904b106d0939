"""The wire model's formulas on cases computed by hand, its break-even bandwidth, and its CLI."""

import json

import pytest

from efcomm import wire_model
from efcomm.wire_model import (
    ALL_GATHER,
    ALL_REDUCE,
    BreakEven,
    Exchange,
    break_even,
    link_bytes,
    predicted_step_seconds,
)

# A GPT-2-sized case, by hand. Dense: D = 500 MB all-reduced, measured step T0 = 100 ms.
# efcomm: a 10 MB message all-gathered, measured step 110 ms (10 ms of compute overhead).
# n = 8 ranks on InfiniBand 400 Gb/s = 50e9 bytes/s:
#   dense link bytes  = 2 * 7/8 * 500e6        = 875e6  -> 875e6 / 50e9 = 17.5 ms -> step 117.5 ms
#   efcomm link bytes = 7 * 10e6               = 70e6   -> 70e6 / 50e9  = 1.4 ms  -> step 111.4 ms
#   break-even        = (875e6 - 70e6) / 0.010 = 80.5e9 bytes/s = 644 Gb/s, efcomm faster below it
DENSE = Exchange("allreduce", ALL_REDUCE, 500e6, 0.100)
EFCOMM = Exchange("ef21:topk:0.01", ALL_GATHER, 10e6, 0.110)
IB = 400e9 / 8


def test_link_bytes_by_hand():
    assert link_bytes(ALL_REDUCE, 800, 8) == pytest.approx(1400)  # 2 * 7/8 * 800
    assert link_bytes(ALL_GATHER, 100, 8) == pytest.approx(700)  # 7 * 100
    assert link_bytes(ALL_REDUCE, 800, 1) == 0 and link_bytes(ALL_GATHER, 100, 1) == 0
    assert link_bytes(ALL_REDUCE, 1000, 512) == pytest.approx(2 * 511 / 512 * 1000)


def test_predicted_step_by_hand():
    assert predicted_step_seconds(DENSE, 8, IB) == pytest.approx(0.1175)
    assert predicted_step_seconds(EFCOMM, 8, IB) == pytest.approx(0.1114)
    # NVLink 900 GB/s: dense 0.1 + 875e6 / 900e9 = 100.972 ms, efcomm 110 + 0.078 ms
    assert predicted_step_seconds(DENSE, 8, 900e9) == pytest.approx(0.1 + 875e6 / 900e9)
    assert predicted_step_seconds(EFCOMM, 8, 900e9) == pytest.approx(0.11 + 70e6 / 900e9)


def test_break_even_by_hand_and_equal_times_there():
    be = break_even(EFCOMM, DENSE, 8)
    assert be.wins == "below" and be.bandwidth == pytest.approx(80.5e9)
    assert be.describe() == "below 644 Gb/s"
    at = be.bandwidth
    assert predicted_step_seconds(EFCOMM, 8, at) == pytest.approx(predicted_step_seconds(DENSE, 8, at), rel=1e-12)
    assert predicted_step_seconds(EFCOMM, 8, at * 0.9) < predicted_step_seconds(DENSE, 8, at * 0.9)
    assert predicted_step_seconds(EFCOMM, 8, at * 1.1) > predicted_step_seconds(DENSE, 8, at * 1.1)


@pytest.mark.parametrize("world", [2, 8, 64, 512])
def test_break_even_times_are_equal_for_every_world(world):
    hook = Exchange("h", ALL_GATHER, 1e6, 0.105)
    be = break_even(hook, DENSE, world)
    if be.bandwidth is not None:
        assert predicted_step_seconds(hook, world, be.bandwidth) == pytest.approx(
            predicted_step_seconds(DENSE, world, be.bandwidth), rel=1e-12
        )


def test_all_gather_loses_at_scale():
    # 512 ranks: efcomm sends 511 * 10e6 = 5.11e9 bytes, dense 2 * 511/512 * 500e6 = 998e6: never faster
    assert break_even(EFCOMM, DENSE, 512) == BreakEven("never")


def test_break_even_cases():
    cheaper_and_smaller = Exchange("a", ALL_REDUCE, 250e6, 0.095)
    assert break_even(cheaper_and_smaller, DENSE, 8) == BreakEven("always")
    # sends more (all-gather of 400 MB at n = 8: 2.8e9 bytes > 875e6) but 10 ms faster:
    # faster above (875e6 - 2.8e9) / (0.09 - 0.1) = 192.5e9 bytes/s
    bigger_but_cheaper = Exchange("b", ALL_GATHER, 400e6, 0.090)
    be = break_even(bigger_but_cheaper, DENSE, 8)
    assert be.wins == "above" and be.bandwidth == pytest.approx(192.5e9)
    assert break_even(Exchange("c", ALL_REDUCE, 500e6, 0.100), DENSE, 8) == BreakEven("never")  # the same
    assert break_even(Exchange("d", ALL_REDUCE, 500e6, 0.099), DENSE, 8) == BreakEven("always")
    assert break_even(Exchange("e", ALL_GATHER, 400e6, 0.120), DENSE, 8) == BreakEven("never")


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="collective \\('broadcast'\\)"):
        Exchange("x", "broadcast", 1.0, 1.0)
    with pytest.raises(ValueError, match="world \\(0\\)"):
        link_bytes(ALL_REDUCE, 1.0, 0)
    with pytest.raises(ValueError, match="bandwidth \\(0\\)"):
        predicted_step_seconds(DENSE, 8, 0)


def _results():
    hooks = [
        {"name": e.name, "collective": e.collective, "bytes_per_step": e.bytes_per_step, "median_s": e.step_seconds}
        for e in (DENSE, EFCOMM)
    ]
    return {"models": [{"name": "gpt2", "hooks": hooks}]}


def test_report_rows_from_benchmark_results():
    text, rows = wire_model.report(_results())
    assert len(rows) == len(wire_model.WORLD_SIZES) * 2
    row = next(r for r in rows if r["world"] == 8 and r["hook"] == "ef21:topk:0.01")
    assert row["predicted_s"]["IB 400Gb/s"] == pytest.approx(0.1114)
    assert row["wins"] == "below" and row["break_even_bandwidth"] == pytest.approx(80.5e9)
    dense_row = next(r for r in rows if r["world"] == 8 and r["hook"] == "allreduce")
    assert dense_row["predicted_s"]["IB 400Gb/s"] == pytest.approx(0.1175) and "wins" not in dense_row
    assert "below 644 Gb/s" in text and "never" in text


def test_report_needs_the_dense_baseline():
    results = _results()
    results["models"][0]["hooks"].pop(0)
    with pytest.raises(ValueError, match="no 'allreduce'"):
        wire_model.report(results)


def test_cli_prints_the_tables(tmp_path, capsys):
    path = tmp_path / "bench_ddp.json"
    path.write_text(json.dumps(_results()))
    wire_model.main([str(path), "--world-sizes", "8"])
    out = capsys.readouterr().out
    assert "n = 8 ranks" in out and "n = 64" not in out
    line = next(line for line in out.splitlines() if line.startswith("ef21:topk:0.01"))
    assert "111.4" in line and "below 644 Gb/s" in line
    with pytest.raises(SystemExit):
        wire_model.main([str(path), "--world-sizes", "0"])
    assert "--world-sizes" in capsys.readouterr().err
