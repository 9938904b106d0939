"""efcomm inside the trainers people use, one module each, imported only when used (``import
efcomm`` imports none of them, nor the trainers' packages):

- ``efcomm.integrations.lightning``: ``EFComm``, a Lightning ``Callback`` (``strategy="ddp"``).
- ``efcomm.integrations.accelerate``: ``register(accelerator, model, ...)`` after
  ``accelerator.prepare``.
- ``efcomm.integrations.transformers``: ``register(trainer, ...)`` for the Hugging Face ``Trainer``.

Each takes efcomm's usual arguments (``method``, ``compressor``, ``**options``), installs
``efcomm.register`` on the DDP model once the trainer has made it, and carries every rank's
error-feedback state through the trainer's own checkpoints. docs/integrations.md has the details.
"""
