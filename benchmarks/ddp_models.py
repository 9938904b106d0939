"""The workloads of bench_ddp.py: a model, its inputs on the device and its loss.

``gpt2``: transformers' GPT2LMHeadModel(GPT2Config()) (124M parameters, built from its
config: nothing is downloaded), 8 sequences of 1024 random tokens. ``resnet50``:
torchvision's resnet50() (25.6M parameters), 128 random 224x224 images, 1000 classes,
channels-last on CUDA. Without transformers or torchvision, and always with ``tiny``, a small
built-in model of the same kind takes the place of each (a causal transformer, a ResNet of
basic blocks); its description says which ran.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

MODELS = ("gpt2", "resnet50")


@dataclass
class Workload:
    name: str
    description: str
    model: nn.Module
    batches: list  # inputs on the device, cycled through step by step
    loss: Callable[[nn.Module, Any], Tensor]


class CausalTransformer(nn.Module):
    """A GPT-like decoder: token and position embeddings, pre-norm blocks with a causal mask,
    an output layer tied to the token embedding."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) / math.sqrt(width))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.embed(tokens) + self.position[:length]
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    """A stem and three stages of basic blocks (width, 2 width, 4 width), then a classifier."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            BasicBlock(width, width, 1),
            BasicBlock(width, 2 * width, 2),
            BasicBlock(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _language_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    logits = model(tokens)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def _hf_language_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    return model(input_ids=tokens, labels=tokens).loss


def _image_loss(model: nn.Module, batch: tuple) -> Tensor:
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def gpt2(device: torch.device, tiny: bool, batch_size: int, batches: int) -> Workload:
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        GPT2LMHeadModel = None
    if GPT2LMHeadModel is not None and not tiny:
        config = GPT2Config()
        with device:
            model = GPT2LMHeadModel(config)
        vocab, length, batch_size = config.vocab_size, config.n_positions, batch_size or 8
        loss, description = _hf_language_loss, "transformers GPT2LMHeadModel(GPT2Config())"
    else:
        vocab, width, layers, length = (512, 64, 2, 32) if tiny else (8192, 384, 4, 256)
        batch_size = batch_size or (4 if tiny else 8)
        with device:
            model = CausalTransformer(vocab, width, layers, heads=4, context=length)
        loss = _language_loss
        description = f"built-in causal transformer (vocab {vocab}, width {width}, {layers} layers)"
        if not tiny:
            description += "; transformers is not installed"
    inputs = [torch.randint(0, vocab, (batch_size, length), device=device, generator=gen) for _ in range(batches)]
    return Workload("gpt2", f"{description}, {batch_size}x{length} tokens", model, inputs, loss)


def resnet50(device: torch.device, tiny: bool, batch_size: int, batches: int) -> Workload:
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        from torchvision.models import resnet50 as torchvision_resnet50
    except ImportError:
        torchvision_resnet50 = None
    if torchvision_resnet50 is not None and not tiny:
        with device:
            model = torchvision_resnet50()
        size, classes, batch_size = 224, 1000, batch_size or 128
        description = "torchvision resnet50()"
    else:
        width, size, classes = (16, 32, 10) if tiny else (64, 64, 100)
        batch_size = batch_size or (8 if tiny else 32)
        with device:
            model = SmallResNet(width, classes)
        description = f"built-in ResNet of basic blocks (width {width})"
        if not tiny:
            description += "; torchvision is not installed"
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    inputs = [
        (
            torch.randn(batch_size, 3, size, size, device=device, generator=gen).contiguous(
                memory_format=memory_format
            ),
            torch.randint(0, classes, (batch_size,), device=device, generator=gen),
        )
        for _ in range(batches)
    ]
    return Workload("resnet50", f"{description}, batch {batch_size}, {size}x{size}", model, inputs, _image_loss)


def make_workload(name: str, device: torch.device, tiny: bool, batch_size: int = 0, batches: int = 2) -> Workload:
    """The workload called ``name`` (one of MODELS), its parameters initialised from seed 0."""
    torch.manual_seed(0)
    builders = {"gpt2": gpt2, "resnet50": resnet50}
    return builders[name](device, tiny, batch_size, batches)
