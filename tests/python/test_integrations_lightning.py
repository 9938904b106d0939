"""efcomm in real Lightning runs (``lightning.Trainer(strategy="ddp")``, 2 gloo processes on
the CPU; the scenarios are in lightning_scenarios.py, run in one launch): compressed exchange,
ranks identical, the state through Lightning's checkpoints and a second fit, gradient
accumulation under bf16 autocast, and strategies that are not DDP rejected."""

from importlib.util import find_spec

import pytest
import torch
from trainer_workers import scenario

pytestmark = pytest.mark.skipif(find_spec("lightning") is None, reason="lightning is not installed (requirements.txt)")

EPOCH_STEPS = 4


@pytest.fixture(scope="module")
def runs(trainer_launch):
    return trainer_launch("lightning_scenarios")


def assert_same_run(a, b):
    assert torch.equal(a["params"], b["params"])
    assert a["stats"] == b["stats"]
    assert [x["signature"] for x in a["state"]["buckets"]] == [y["signature"] for y in b["state"]["buckets"]]
    for x, y in zip(a["state"]["buckets"], b["state"]["buckets"]):
        assert x["tensors"].keys() == y["tensors"].keys()
        assert all(torch.equal(x["tensors"][n], y["tensors"][n]) for n in x["tensors"])


def test_fit_compresses_with_ranks_identical_and_the_loss_falls(runs):
    ranks = scenario(runs, "uninterrupted")
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        stats = r["stats"]
        assert stats["steps"] == 2 * EPOCH_STEPS
        # EF21 + Top-10% (fp32 values, int32 indices: 20% of dense), after one dense start.
        assert 0 < stats["bytes_sent"] < 0.35 * stats["dense_bytes"]
        # DDP rebuilt its buckets after the first step: the state followed by parameter name.
        assert stats["initialisations"] == 1 and stats["relayouts"] == 1
        losses = r["losses"]
        assert sum(losses[EPOCH_STEPS:]) < 0.95 * sum(losses[:EPOCH_STEPS])


def test_fit_from_a_checkpoint_continues_bit_for_bit(runs):
    for uninterrupted, resumed in zip(scenario(runs, "uninterrupted"), scenario(runs, "resumed")):
        assert_same_run(uninterrupted, resumed)
        assert resumed["losses"] == uninterrupted["losses"][EPOCH_STEPS:]
    # Rank 0 wrote the checkpoint, with every rank's state in it.
    saved = runs[0]["resumed"]
    assert saved["saved_ranks"] == ["0", "1"] and saved["saved_steps"] == [EPOCH_STEPS, EPOCH_STEPS]


def test_a_second_fit_carries_the_state_over(runs):
    for uninterrupted, second in zip(scenario(runs, "uninterrupted"), scenario(runs, "second_fit")):
        assert_same_run(uninterrupted, second)


def test_gradient_accumulation_under_bf16_autocast(runs):
    ranks = scenario(runs, "accumulate_bf16")
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        assert r["stats"]["steps"] == EPOCH_STEPS // 2  # one exchange per two micro-batches
        assert 0 < r["stats"]["bytes_sent"] < r["stats"]["dense_bytes"]
        assert all(torch.isfinite(torch.tensor(r["losses"])))


def test_strategies_that_are_not_ddp_are_rejected_before_training(runs):
    for errors in scenario(runs, "rejected"):
        for name, strategy in (("single_device", "SingleDeviceStrategy"), ("fsdp", "FSDPStrategy")):
            assert errors[name] == (
                f"TypeError: efcomm.integrations.lightning.EFComm: the Trainer's strategy is {strategy}; efcomm "
                "compresses the gradient exchange of DistributedDataParallel: use strategy='ddp' (DDPStrategy) "
                "with several processes (for FSDP2 models, efcomm.register_fsdp)"
            )
        assert errors["comm_hook"].startswith("ValueError: efcomm.integrations.lightning.EFComm: the DDPStrategy has")
        assert errors["single_device_trained"] == errors["comm_hook_trained"] == 0
        assert "ddp_model must be a DistributedDataParallel; got Classifier" in errors["register_module"]
