"""efcomm in PyTorch Lightning (the ``lightning`` package): a callback.

    from efcomm.integrations.lightning import EFComm

    efcomm_cb = EFComm()  # or EFComm("ef21", efcomm.TopK(0.1), min_compress_numel=32)
    trainer = lightning.Trainer(strategy="ddp", devices=2, callbacks=[efcomm_cb])
    trainer.fit(model)  # or trainer.fit(model, ckpt_path=...): the state resumes with the rest
    efcomm_cb.stats.bytes_sent, efcomm_cb.stats.dense_bytes

Lightning's DDPStrategy wraps the LightningModule in DistributedDataParallel inside
``Trainer.fit``, after the callbacks' ``setup`` and before their ``on_fit_start``: the callback
registers efcomm there (``efcomm.register``, which records parameter names; DDPStrategy's own
``ddp_comm_hook`` argument does not, and Lightning registers it on CUDA devices only). Its state
goes into Lightning's checkpoints through ``state_dict``/``load_state_dict``: rank 0 writes the
checkpoint, so saving gathers every rank's state there, and a resumed rank takes its own.
"""

import warnings

from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy

from ..state import DEFAULT_METHOD
from ._common import RankStates, check_options, install

WHO = "efcomm.integrations.lightning.EFComm"


class EFComm(Callback):
    """Compresses the gradient exchange of a ``Trainer(strategy="ddp")`` run with efcomm.

    ``method``, ``compressor`` and ``options`` are :func:`efcomm.register`'s. ``state`` is this
    rank's :class:`efcomm.EFState` once ``fit`` has started (``stats``: its CommStats), in the
    process that trains (with ``strategy="ddp_spawn"``, the spawned processes). Rejects, when
    ``fit`` starts, a strategy other than DDPStrategy (single device, FSDP, DeepSpeed, ...) and a
    DDPStrategy given a ``ddp_comm_hook`` of its own.
    """

    def __init__(self, method=DEFAULT_METHOD, compressor=None, **options) -> None:
        check_options(method, compressor, options)
        self.method, self.compressor, self.options = method, compressor, options
        self._states = RankStates(WHO)

    @property
    def state(self):
        return self._states.state

    @property
    def stats(self):
        return None if self.state is None else self.state.stats

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            raise TypeError(
                f"{WHO}: the Trainer's strategy is {type(strategy).__name__}; efcomm compresses the gradient "
                "exchange of DistributedDataParallel: use strategy='ddp' (DDPStrategy) with several processes "
                "(for FSDP2 models, efcomm.register_fsdp)"
            )
        if getattr(strategy, "_ddp_comm_hook", None) is not None:
            raise ValueError(
                f"{WHO}: the DDPStrategy has a ddp_comm_hook of its own; DDP takes one communication hook: drop it"
            )

    def on_fit_start(self, trainer, pl_module) -> None:
        # A new DDP model at every fit: its state is the checkpoint's (fit(ckpt_path=...)), else
        # the last fit's (a second fit continues the run).
        self._states.attach(install(trainer.strategy.model, self.method, self.compressor, dict(self.options), WHO))

    def state_dict(self) -> dict:
        return self._states.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._states.load_later(state_dict)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            warnings.warn(
                f"{WHO}: the checkpoint holds no efcomm state; the error-feedback state starts afresh", stacklevel=2
            )
