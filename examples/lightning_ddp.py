"""efcomm in PyTorch Lightning: a byte-level language model (efcomm.lm.ByteGPT) on the Python
standard library's sources, trained by a Lightning Trainer with strategy="ddp" (2 processes on
the CPU, or one per GPU), its gradient exchange compressed by efcomm's defaults.

    python examples/lightning_ddp.py                          # 2 epochs, checkpointed at the end of each
    python examples/lightning_ddp.py --epochs 3 --resume CKPT # one more, efcomm's state resumed too
"""

import argparse
import os
import tempfile

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from efcomm.integrations.lightning import EFComm
from efcomm.lm import ByteGPT, LMConfig, load_corpus


class LanguageModel(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = ByteGPT(LMConfig())

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume", help="a checkpoint of an earlier run (printed at its end)")
    args = parser.parse_args()

    text = load_corpus(max_bytes=2**20)["train"]
    windows = text[: text.numel() // 65 * 65].view(-1, 65).long()  # 64 bytes in, the next 64 out
    loader = DataLoader(TensorDataset(windows[:, :-1], windows[:, 1:]), batch_size=16, shuffle=True)

    efcomm_cb = EFComm()  # or EFComm("ef21", efcomm.TopK(0.1), min_compress_numel=...): efcomm.register's arguments
    trainer = L.Trainer(
        strategy="ddp",
        devices="auto" if torch.cuda.is_available() else 2,
        max_epochs=args.epochs,
        limit_train_batches=100,
        callbacks=[efcomm_cb],
        default_root_dir=os.path.join(tempfile.gettempdir(), "efcomm_lightning_example"),
        enable_progress_bar=False,
    )
    trainer.fit(LanguageModel(), loader, ckpt_path=args.resume)

    stats = efcomm_cb.stats
    print(
        f"rank {trainer.global_rank}: loss {float(trainer.callback_metrics['loss']):.3f}; sent {stats.bytes_sent:,} "
        f"bytes where DDP's all-reduce sends {stats.dense_bytes:,} ({stats.compression_factor:.0f}x fewer) in "
        f"{stats.steps} steps; last checkpoint: {trainer.checkpoint_callback.best_model_path}"
    )


if __name__ == "__main__":
    main()
