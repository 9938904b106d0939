"""efcomm: compressed DDP gradient communication with error feedback (EF21 and its relatives;
Top-k, Rand-k and quantizers)."""
from . import methods, ops  # efcomm.sim and efcomm.problems are imported on use
from .compressors import (
    FP8,
    QSGD,
    Compressor,
    Context,
    Identity,
    Induced,
    Int8,
    Natural,
    RandK,
    Scaled,
    ScaledSign,
    TopK,
)
from .bucket_state import BucketState
from .hook import ef_hook, register
from .state import EFState
from .methods import METHODS, Method
from .smoothness import estimate_smoothness
from .stats import CommStats

__all__ = [
    "methods",
    "ops",
    "Compressor",
    "Context",
    "TopK",
    "RandK",
    "QSGD",
    "Natural",
    "ScaledSign",
    "Int8",
    "FP8",
    "Identity",
    "Induced",
    "Scaled",
    "estimate_smoothness",
    "EFState", "BucketState", "CommStats", "METHODS", "Method", "ef_hook", "register"]
__version__ = "0.1.0"
