"""Compressors: configuration objects accepted by :func:`efcomm.register`, the methods and
the simulator. The interface is in :mod:`efcomm.compressors.base`; each family has its file,
and this list is their one registration."""

from . import chunked, dense, induced, int4, nonuniform, quantizers, randk, topk  # noqa: F401  (each registers its classes)
from .base import COMPRESSORS, Codec, Compressor, Context

for _cls in COMPRESSORS:
    globals()[_cls.__name__] = _cls

__all__ = ["Codec", "Compressor", "Context", "COMPRESSORS"] + [c.__name__ for c in COMPRESSORS]
