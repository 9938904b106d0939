"""efcomm in real Accelerate runs (``accelerator.prepare`` over 2 gloo processes on the CPU; the
scenarios are in accelerate_scenarios.py, run in one launch): compressed exchange, ranks
identical, the state through ``save_state``/``load_state``, ``accelerator.accumulate``, and
models that Accelerate did not wrap in DDP rejected."""

from importlib.util import find_spec

import pytest
import torch
from trainer_workers import scenario

pytestmark = pytest.mark.skipif(
    find_spec("accelerate") is None, reason="accelerate is not installed (requirements.txt)"
)

EPOCH_STEPS = 4


@pytest.fixture(scope="module")
def runs(trainer_launch):
    return trainer_launch("accelerate_scenarios")


def test_training_compresses_with_ranks_identical_and_the_loss_falls(runs):
    ranks = scenario(runs, "uninterrupted")
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        stats = r["stats"]
        assert stats["steps"] == 2 * EPOCH_STEPS
        assert 0 < stats["bytes_sent"] < 0.25 * stats["dense_bytes"]  # EF + Top-10%: 20% of dense
        assert stats["initialisations"] == 0 and stats["relayouts"] == 1  # classic EF starts from zero error
        losses = r["losses"]
        assert sum(losses[EPOCH_STEPS:]) < 0.95 * sum(losses[:EPOCH_STEPS])


def test_load_state_continues_bit_for_bit(runs):
    for uninterrupted, resumed in zip(scenario(runs, "uninterrupted"), scenario(runs, "resumed")):
        assert torch.equal(uninterrupted["params"], resumed["params"])
        assert uninterrupted["stats"] == resumed["stats"]
        assert resumed["losses"] == uninterrupted["losses"][EPOCH_STEPS:]
        for x, y in zip(uninterrupted["state"]["buckets"], resumed["state"]["buckets"], strict=True):
            assert x["signature"] == y["signature"]
            assert all(torch.equal(x["tensors"][n], y["tensors"][n]) for n in x["tensors"])
    assert runs[0]["resumed"]["saved_ranks"] == ["0", "1"]  # the main process wrote every rank's state


def test_accumulate_exchanges_once_per_optimizer_step(runs):
    ranks = scenario(runs, "accumulate")
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        assert r["stats"]["steps"] == EPOCH_STEPS // 2
        assert 0 < r["stats"]["bytes_sent"] < r["stats"]["dense_bytes"]


def test_models_not_wrapped_in_ddp_are_rejected(runs):
    prefix = (
        "efcomm.integrations.accelerate.register: model is a Sequential, not the DistributedDataParallel of the run: "
    )
    for errors in scenario(runs, "rejected"):
        assert (
            errors["unprepared"]
            == prefix + "register after accelerator.prepare(model), with the model that it returned"
        )
        assert errors["one_process"].startswith(prefix + "the run has one process")
        assert errors["fsdp"] == prefix + "the run uses FSDP, not DDP (for FSDP2 models, efcomm.register_fsdp)"
