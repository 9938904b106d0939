"""efcomm: compressed data-parallel communication with error feedback (EF21 and its relatives;
Top-k, Rand-k and quantizers): of the gradient (DDP and FSDP2 hooks) or of the optimizer's update
(compress_updates)."""

from . import compressors, methods, ops  # the simulator (efcomm.sim) is a subpackage that this never imports
from .bucket_state import BucketState
from .compressors import *  # noqa: F401,F403  (every registered compressor: TopK, RandK, QSGD, ...)
from .fsdp import register_fsdp
from .hook import ef_hook, register
from .methods import METHODS, Method
from .smoothness import estimate_smoothness
from .state import EFState
from .stats import CommStats
from .updates import CompressedUpdates, compress_updates

__all__ = [
    "compressors",
    "methods",
    "ops",
    "estimate_smoothness",
    "EFState",
    "BucketState",
    "CommStats",
    "METHODS",
    "Method",
    "ef_hook",
    "register",
    "register_fsdp",
    "compress_updates",
    "CompressedUpdates",
] + compressors.__all__
__version__ = "0.1.0"
