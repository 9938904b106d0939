"""Error-feedback methods (the interface: efcomm.methods.base). Each file holds a family;
``@register_method`` in it is the registration that puts a method in :data:`METHODS`."""

from .base import METHODS, Method, Worker, make_method
from .basic import DCSGD, EF
from .ef21 import EF21, EF21SGDM, EF21W, Clip21, EControl
from .lazy import CLAG, LAG, AdaCGD, LazyMethod
from .motef import MoTEF

__all__ = [
    "METHODS",
    "Method",
    "Worker",
    "make_method",
    "DCSGD",
    "EF",
    "EF21",
    "EF21SGDM",
    "EF21W",
    "Clip21",
    "EControl",
    "LazyMethod",
    "LAG",
    "CLAG",
    "AdaCGD",
    "MoTEF",
]
