"""The Lightning scenarios (run by trainer_workers.launch on 2 gloo ranks; read by
test_integrations_lightning.py): real ``lightning.Trainer(strategy="ddp")`` fits of a small
LightningModule with efcomm's callback."""

import warnings
from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, TensorDataset

import efcomm
from efcomm.integrations.lightning import EFComm
from efcomm.state import per_rank

warnings.filterwarnings("ignore", module="lightning")  # its advice on workers, logging and sanity checks

EPOCH_STEPS = 4  # 64 samples, 8 a batch, 2 ranks


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        # Plain SGD keeps no state, so that a second fit (a new optimizer) continues exactly.
        return torch.optim.SGD(self.parameters(), lr=0.2)


def loader():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=gen)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4  # learnable, not linear
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def callback():
    return EFComm("ef21", efcomm.TopK(0.1), min_compress_numel=32)


def trainer(directory, callbacks, **options):
    settings = dict(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(directory),
    )
    settings.update(options)
    return L.Trainer(callbacks=callbacks, **settings)


def result(module, cb):
    return {
        "params": torch.cat([p.detach().reshape(-1) for p in module.parameters()]),
        "losses": module.losses,
        "stats": cb.stats.state_dict(),
        "state": per_rank(cb.state.state_dict()),
    }


def uninterrupted(rank, directory):
    """Two epochs, a checkpoint after each."""
    module, cb = Classifier(), callback()
    saver = ModelCheckpoint(dirpath=directory / "lightning", every_n_epochs=1, save_top_k=-1)
    trainer(directory, [cb, saver], enable_checkpointing=True).fit(module, loader())
    return result(module, cb)


def resumed(rank, directory):
    """A new Trainer, module and callback resume from the checkpoint of epoch 0."""
    module, cb = Classifier(), callback()
    ckpt = directory / "lightning" / f"epoch=0-step={EPOCH_STEPS}.ckpt"
    trainer(directory, [cb]).fit(module, loader(), ckpt_path=ckpt)
    out = result(module, cb)
    if rank == 0:
        saved = torch.load(ckpt, weights_only=True)["callbacks"][cb.state_key]
        out["saved_ranks"] = sorted(saved["ranks"])
        out["saved_steps"] = [saved["ranks"][r]["stats"]["steps"] for r in sorted(saved["ranks"])]
    return out


def second_fit(rank, directory):
    """One epoch, then a second fit of the same Trainer to two: a new DDP model, the state
    carried over."""
    module, cb = Classifier(), callback()
    fit = trainer(directory, [cb], max_epochs=1)
    fit.fit(module, loader())
    fit.fit_loop.max_epochs = 2
    fit.fit(module, loader())
    return result(module, cb)


def accumulate_bf16(rank, directory):
    """Two micro-batches a step (DDP's no_sync) under bf16 autocast, one epoch."""
    module, cb = Classifier(), callback()
    trainer(directory, [cb], max_epochs=1, accumulate_grad_batches=2, precision="bf16-mixed").fit(module, loader())
    return result(module, cb)


def rejected(rank, directory):
    """Strategies that are not DDP, or DDP with a hook of its own: the fit raises at once."""
    errors = {}
    cases = {
        "single_device": dict(devices=1, strategy=SingleDeviceStrategy("cpu")),
        "comm_hook": dict(strategy=DDPStrategy(ddp_comm_hook=default_hooks.allreduce_hook)),
    }
    for name, options in cases.items():
        module = Classifier()
        try:
            trainer(directory, [callback()], max_epochs=1, **options).fit(module, loader())
            errors[name] = None
        except (TypeError, ValueError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
        errors[name + "_trained"] = len(module.losses)
    try:  # FSDP needs a GPU in Lightning: the callback's check on its own
        callback().setup(SimpleNamespace(strategy=FSDPStrategy()), Classifier(), "fit")
        errors["fsdp"] = None
    except TypeError as e:
        errors["fsdp"] = f"TypeError: {e}"
    try:
        efcomm.register(Classifier())
    except TypeError as e:
        errors["register_module"] = str(e)
    return errors


SCENARIOS = [uninterrupted, resumed, second_fit, accumulate_bf16, rejected]
