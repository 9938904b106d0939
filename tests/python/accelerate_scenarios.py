"""The Accelerate scenarios (run by trainer_workers.launch on 2 gloo ranks; read by
test_integrations_accelerate.py): a plain training loop over ``accelerator.prepare``'s objects
with efcomm registered, saved and resumed with ``accelerator.save_state``/``load_state``."""

from types import SimpleNamespace

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import efcomm
from efcomm.integrations import accelerate as efcomm_accelerate
from efcomm.state import per_rank


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def prepared(accumulation: int = 1):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=gen)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)  # 4 batches per rank
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = efcomm_accelerate.register(accelerator, model, compressor=efcomm.TopK(0.1), min_compress_numel=32)
    return accelerator, model, optimizer, loader, state


def train(accelerator, model, optimizer, loader, epochs, save_after=None, directory=None):
    losses = []
    for epoch in epochs:
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.cross_entropy(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.item())
        if epoch == save_after:
            accelerator.save_state(directory)
    return losses


def result(model, state, losses):
    return {
        "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
        "losses": losses,
        "stats": state.stats.state_dict(),
        "state": per_rank(state.state_dict()),
    }


def uninterrupted(rank, directory):
    """Two epochs (AdamW, default method: classic EF with Top-10%), saved after the first."""
    accelerator, model, optimizer, loader, state = prepared()
    losses = train(accelerator, model, optimizer, loader, range(2), save_after=0, directory=directory / "accelerate")
    return result(model, state, losses)


def resumed(rank, directory):
    """New objects load the state saved after epoch 0 and train epoch 1."""
    accelerator, model, optimizer, loader, state = prepared()
    accelerator.load_state(directory / "accelerate")
    out = result(model, state, train(accelerator, model, optimizer, loader, range(1, 2)))
    if rank == 0:
        saved = torch.load(directory / "accelerate" / "custom_checkpoint_0.pkl", weights_only=True)
        out["saved_ranks"] = sorted(saved["ranks"])
    return out


def accumulate(rank, directory):
    """Two micro-batches a step with accelerator.accumulate (no_sync), one epoch."""
    accelerator, model, optimizer, loader, state = prepared(accumulation=2)
    return result(model, state, train(accelerator, model, optimizer, loader, range(1)))


def rejected(rank, directory):
    """A model not yet prepared, and (stand-ins for the accelerator) a single-process or FSDP run."""
    errors = {}
    cases = {
        "unprepared": Accelerator(cpu=True),
        "one_process": SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1),
        "fsdp": SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=2),
    }
    for name, accelerator in cases.items():
        try:
            efcomm_accelerate.register(accelerator, mlp())
            errors[name] = None
        except TypeError as e:
            errors[name] = str(e)
    return errors


SCENARIOS = [uninterrupted, resumed, accumulate, rejected]
