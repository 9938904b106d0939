"""Loads efcomm's native op library. A missing or broken build raises: it never falls back."""

import importlib.machinery
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def _library_path() -> Path:
    # Only a build for this interpreter (its extension suffix), never another Python's.
    candidates = [_PACKAGE_DIR / f"_efcomm_ops{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    candidates = [c for c in candidates if c.exists()]
    if not candidates:
        raise ImportError(
            f"efcomm: the native library _efcomm_ops{importlib.machinery.EXTENSION_SUFFIXES[0]} is not in {_PACKAGE_DIR}; "
            "build it with `pip install --no-build-isolation -e .` (see README.md)"
        )
    return candidates[0]


LIBRARY_PATH = _library_path()
torch.ops.load_library(str(LIBRARY_PATH))

# True when the library was compiled with its CUDA kernels (EFCOMM_WITH_CUDA).
BUILT_WITH_CUDA = torch._C._dispatch_has_kernel_for_dispatch_key("efcomm::topk", "CUDA")
