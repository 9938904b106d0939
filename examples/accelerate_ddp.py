"""efcomm with Hugging Face Accelerate: a byte-level language model (efcomm.lm.ByteGPT) on the
Python standard library's sources, in a plain training loop over accelerator.prepare's objects
with two micro-batches a step, its gradient exchange compressed by EF21 + Top-10%.

    torchrun --nproc-per-node 2 examples/accelerate_ddp.py               # or: accelerate launch --num_processes 2
    torchrun --nproc-per-node 2 examples/accelerate_ddp.py --resume DIR  # from the state it saved
"""

import argparse
import os
import tempfile

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import efcomm
from efcomm.integrations import accelerate as efcomm_accelerate
from efcomm.lm import ByteGPT, LMConfig, load_corpus


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--resume", help="a folder that accelerator.save_state wrote (printed at the end)")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=2)
    text = load_corpus(max_bytes=2**20)["train"]
    windows = text[: text.numel() // 65 * 65].view(-1, 65).long()  # 64 bytes in, the next 64 out
    loader = DataLoader(TensorDataset(windows[:, :-1], windows[:, 1:]), batch_size=8, shuffle=True)
    torch.manual_seed(0)
    model = ByteGPT(LMConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = efcomm_accelerate.register(accelerator, model, "ef21", efcomm.TopK(0.1))  # after prepare
    if args.resume:
        accelerator.load_state(args.resume)  # the model, the optimizer and every rank's efcomm state

    for step, (x, y) in enumerate(loader):
        if step == 2 * args.steps:
            break
        with accelerator.accumulate(model):  # DDP's no_sync on the first micro-batch: efcomm runs on the second
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

    out = os.path.join(tempfile.gettempdir(), "efcomm_accelerate_example", f"step{state.stats.steps}")
    accelerator.save_state(out)
    stats = state.stats
    print(
        f"rank {accelerator.process_index}: loss {loss.item():.3f}; sent {stats.bytes_sent:,} bytes where DDP's "
        f"all-reduce sends {stats.dense_bytes:,} ({stats.compression_factor:.1f}x fewer) in {stats.steps} steps; "
        f"state saved to {out}"
    )


if __name__ == "__main__":
    main()
