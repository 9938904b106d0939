"""efcomm with the Hugging Face Trainer: a GPT-2 built in code (2 blocks, 64 wide, a byte
vocabulary: nothing downloaded) on the Python standard library's sources, its DDP gradient
exchange compressed by efcomm's defaults.

    torchrun --nproc-per-node 2 examples/hf_trainer_ddp.py                       # checkpoints every 50 steps
    torchrun --nproc-per-node 2 examples/hf_trainer_ddp.py --steps 150 --resume  # from the last one
"""

import argparse
import os
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from efcomm.integrations import transformers as efcomm_transformers
from efcomm.lm import load_corpus


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint of an earlier run")
    args = parser.parse_args()

    text = load_corpus(max_bytes=2**20)["train"]
    windows = text[: text.numel() // 64 * 64].view(-1, 64).long()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=os.path.join(tempfile.gettempdir(), "efcomm_hf_trainer_example"),
            per_device_train_batch_size=16,
            max_steps=args.steps,
            learning_rate=3e-3,
            save_steps=50,
            logging_steps=25,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        ),
        train_dataset=[{"input_ids": w, "labels": w} for w in windows],
    )
    efcomm_cb = efcomm_transformers.register(trainer)  # or (trainer, "ef21", efcomm.TopK(0.1), ...)
    trainer.train(resume_from_checkpoint=args.resume)

    stats = efcomm_cb.stats
    print(
        f"rank {trainer.args.process_index}: sent {stats.bytes_sent:,} bytes where DDP's all-reduce sends "
        f"{stats.dense_bytes:,} ({stats.compression_factor:.0f}x fewer) in {stats.steps} steps"
    )


if __name__ == "__main__":
    main()
