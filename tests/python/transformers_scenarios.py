"""The Hugging Face Trainer scenarios (run by trainer_workers.launch on 2 gloo ranks; read by
test_integrations_transformers.py): ``transformers.Trainer`` runs of a GPT-2 built in code (one
block, 32 wide, 64 tokens: nothing downloaded) with efcomm registered."""

import shutil
import warnings
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.training_args import ParallelMode
from transformers.utils import logging

import efcomm
from efcomm.integrations import transformers as efcomm_transformers
from efcomm.state import per_rank

logging.set_verbosity_error()
warnings.filterwarnings("ignore", module="transformers")

EPOCH_STEPS = 4  # 64 sequences, 8 a batch, 2 ranks


class Progressions(Dataset):
    """Arithmetic progressions modulo the vocabulary: each next token follows from the last two."""

    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        start, step = torch.randint(0, 64, (64, 1), generator=gen), torch.randint(1, 8, (64, 1), generator=gen)
        self.ids = (start + step * torch.arange(16)) % 64

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    return GPT2LMHeadModel(config)


def trainer(output_dir, **options):
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        max_steps=2 * EPOCH_STEPS,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=EPOCH_STEPS,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(options)
    return Trainer(model=gpt2(), args=TrainingArguments(**settings), train_dataset=Progressions())


def result(run, callback):
    return {
        "params": torch.cat([p.detach().reshape(-1) for p in run.model.parameters()]),
        "losses": [entry["loss"] for entry in run.state.log_history if "loss" in entry],
        "stats": callback.stats.state_dict(),
        "state": per_rank(callback.state.state_dict()),
        "wrapped": type(run.model_wrapped).__name__,
    }


def uninterrupted(rank, directory):
    """Two epochs with efcomm's defaults, a checkpoint after each."""
    run = trainer(directory / "hf")
    callback = efcomm_transformers.register(run)
    run.train()
    return result(run, callback)


def resumed(rank, directory):
    """A new Trainer in another folder, which holds a copy of the first epoch's checkpoint,
    resumes from its last checkpoint (resume_from_checkpoint=True)."""
    first = directory / "hf" / f"checkpoint-{EPOCH_STEPS}"
    if rank == 0:
        shutil.copytree(first, directory / "hf_resumed" / first.name)
    dist.barrier()
    run = trainer(directory / "hf_resumed")
    callback = efcomm_transformers.register(run)
    run.train(resume_from_checkpoint=True)
    out = result(run, callback)
    out["files"] = sorted(p.name for p in first.glob("efcomm_state_rank*.pt"))
    return out


def accumulate(rank, directory):
    """Two micro-batches a step (DDP's no_sync inside the Trainer), two steps."""
    run = trainer(directory / "hf_accumulate", gradient_accumulation_steps=2, max_steps=2, save_strategy="no")
    callback = efcomm_transformers.register(run)
    run.train()
    return result(run, callback)


def rejected(rank, directory):
    """Registering on the model itself, and (stand-ins for the Trainer) a one-process or FSDP run."""
    errors = {}
    cases = {
        "one_process": SimpleNamespace(
            args=SimpleNamespace(parallel_mode=ParallelMode.NOT_PARALLEL),
            is_fsdp_enabled=False,
            is_deepspeed_enabled=False,
        ),
        "fsdp": SimpleNamespace(
            args=SimpleNamespace(parallel_mode=ParallelMode.DISTRIBUTED),
            is_fsdp_enabled=True,
            is_deepspeed_enabled=False,
        ),
    }
    for name, run in cases.items():
        try:
            efcomm_transformers.register(run)
            errors[name] = None
        except TypeError as e:
            errors[name] = str(e)
    try:
        efcomm.register(gpt2())
    except TypeError as e:
        errors["register_model"] = str(e)
    return errors


SCENARIOS = [uninterrupted, resumed, accumulate, rejected]
