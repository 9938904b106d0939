"""efcomm in real Hugging Face Trainer runs (a GPT-2 built in code, 2 gloo processes on the CPU;
the scenarios are in transformers_scenarios.py, run in one launch): compressed exchange with
efcomm's defaults, ranks identical, the state through the Trainer's checkpoints and
``resume_from_checkpoint``, gradient accumulation, and runs without DDP rejected."""

from importlib.util import find_spec

import pytest
import torch
from trainer_workers import scenario

pytestmark = pytest.mark.skipif(
    find_spec("transformers") is None, reason="transformers is not installed (requirements.txt)"
)

EPOCH_STEPS = 4


@pytest.fixture(scope="module")
def runs(trainer_launch):
    return trainer_launch("transformers_scenarios")


def test_training_compresses_with_ranks_identical_and_the_loss_falls(runs):
    ranks = scenario(runs, "uninterrupted")
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        assert r["wrapped"] == "DistributedDataParallel"
        stats = r["stats"]
        assert stats["steps"] == 2 * EPOCH_STEPS
        assert 0 < stats["bytes_sent"] < 0.015 * stats["dense_bytes"]  # the default: compact Top-1%
        losses = r["losses"]
        assert len(losses) == 2 * EPOCH_STEPS
        assert sum(losses[EPOCH_STEPS:]) < 0.99 * sum(losses[:EPOCH_STEPS])


def test_resume_from_checkpoint_continues_bit_for_bit(runs):
    for uninterrupted, resumed in zip(scenario(runs, "uninterrupted"), scenario(runs, "resumed")):
        assert torch.equal(uninterrupted["params"], resumed["params"])
        assert uninterrupted["stats"] == resumed["stats"]
        assert uninterrupted["losses"] == resumed["losses"]
        for x, y in zip(uninterrupted["state"]["buckets"], resumed["state"]["buckets"], strict=True):
            assert x["signature"] == y["signature"]
            assert all(torch.equal(x["tensors"][n], y["tensors"][n]) for n in x["tensors"])
        assert resumed["files"] == ["efcomm_state_rank0.pt", "efcomm_state_rank1.pt"]


def test_gradient_accumulation_exchanges_once_per_optimizer_step(runs):
    ranks = scenario(runs, "accumulate")
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        assert r["stats"]["steps"] == 2  # two optimizer steps of two micro-batches
        assert 0 < r["stats"]["bytes_sent"] < r["stats"]["dense_bytes"]


def test_runs_without_ddp_are_rejected(runs):
    for errors in scenario(runs, "rejected"):
        assert errors["one_process"].startswith("efcomm.integrations.transformers: the Trainer runs in 'not_parallel'")
        assert errors["fsdp"].startswith("efcomm.integrations.transformers: the Trainer runs FSDP, not DDP")
        assert "ddp_model must be a DistributedDataParallel; got GPT2LMHeadModel" in errors["register_model"]
