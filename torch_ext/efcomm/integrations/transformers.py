"""efcomm in the Hugging Face ``Trainer``: one call before ``trainer.train()``.

    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    efcomm_cb = efcomm.integrations.transformers.register(trainer)  # method, compressor, **options
    trainer.train()  # or trainer.train(resume_from_checkpoint=...): the state resumes with the rest
    efcomm_cb.state.stats.bytes_sent, efcomm_cb.state.stats.dense_bytes

The Trainer wraps the model in DistributedDataParallel inside ``train()`` (through Accelerate,
into ``trainer.model_wrapped``), after loading a checkpoint's weights and before its callbacks'
``on_train_begin``: ``register`` adds a ``TrainerCallback`` that installs ``efcomm.register``
there. Each rank writes its state into the checkpoint folder beside the Trainer's own per-rank
files (``efcomm_state_rank{r}.pt`` beside ``rng_state_{r}.pth``) in ``on_save``. The Trainer
tells callbacks neither the wrapped model nor the checkpoint it resumes from, so the callback
holds the trainer, and ``register`` wraps ``trainer.train`` to learn ``resume_from_checkpoint``.
"""

import functools
import os
from typing import Optional

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.training_args import ParallelMode

from ..state import DEFAULT_METHOD, EFState
from ._common import check_options, install, load_rank_file, save_rank_file

WHO = "efcomm.integrations.transformers"


class EFCommCallback(TrainerCallback):
    """The callback that :func:`register` adds: ``state`` is this rank's :class:`efcomm.EFState`
    once training has begun (``stats``: its CommStats)."""

    def __init__(self, trainer: Trainer, method=DEFAULT_METHOD, compressor=None, **options) -> None:
        self.trainer = trainer
        self.method, self.compressor, self.options = method, compressor, options
        self.state: Optional[EFState] = None
        self.resume_from: Optional[str] = None  # the checkpoint folder of the train() call under way
        self._ddp = None

    @property
    def stats(self):
        return None if self.state is None else self.state.stats

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.hp_search_backend is not None:
            raise ValueError(f"{WHO}: hyperparameter search runs are not supported")
        ddp = self.trainer.model_wrapped
        if ddp is not self._ddp:  # a second train() keeps the DDP model and the hook on it
            self.state = install(ddp, self.method, self.compressor, dict(self.options), WHO)
            self._ddp = ddp
        if self.resume_from is not None:
            load_rank_file(self.state, self.resume_from, WHO)

    def on_save(self, args, state, control, **kwargs):
        if self.state is not None:
            save_rank_file(self.state, os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))


def register(trainer: Trainer, method=DEFAULT_METHOD, compressor=None, **options) -> EFCommCallback:
    """Makes ``trainer`` compress its DDP gradient exchange with efcomm from its next ``train()``
    on; returns the callback (``.state``, ``.stats``). ``method``, ``compressor`` and ``options``
    are :func:`efcomm.register`'s. Raises on a run that the Trainer does not wrap in DDP: one
    process (or ``torch.nn.DataParallel``), FSDP, DeepSpeed."""
    args = trainer.args
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        engine = "FSDP" if trainer.is_fsdp_enabled else "DeepSpeed"
        raise TypeError(
            f"{WHO}: the Trainer runs {engine}, not DDP; efcomm compresses the gradient exchange of "
            "DistributedDataParallel (for FSDP2 models, efcomm.register_fsdp)"
        )
    if args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise TypeError(
            f"{WHO}: the Trainer runs in {args.parallel_mode.value!r} mode, one process, which has no DDP "
            "gradient exchange to compress: launch one process per device (torchrun, accelerate launch)"
        )
    check_options(method, compressor, options)
    callback = EFCommCallback(trainer, method, compressor, **options)
    trainer.add_callback(callback)
    train = trainer.train

    @functools.wraps(train)
    def train_and_resume_efcomm(resume_from_checkpoint=None, *rest, **kwargs):
        folder = resume_from_checkpoint
        if folder is True:  # the Trainer's rule: the last checkpoint in output_dir
            folder = get_last_checkpoint(args.output_dir)
        callback.resume_from = folder or None
        return train(resume_from_checkpoint, *rest, **kwargs)

    trainer.train = train_and_resume_efcomm
    return callback
