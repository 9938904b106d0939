"""Per-bucket error-feedback state, and how it follows DDP's bucket layouts.

A state is keyed by its bucket's signature (dtype, size, parameter names and shapes in
order), never by DDP's bucket index, which changes meaning when DDP rebuilds its buckets.
Method states are per coordinate, so they can be re-laid out by parameter: that is how a
state follows DDP's rebuild after the first iteration, and how a resumed run, which starts
from DDP's initial layout again, continues exactly where the saved run stopped.
"""

import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


class DeviceFlag:
    """A boolean computed on the device, read on the host one step later without stalling
    the stream: on CUDA it is copied to pinned memory behind an event. By the time it is read
    (the same bucket, one step later) the event has completed, so the read asks the event
    (``query``, no synchronisation) and waits only if the device is still behind."""

    def __init__(self, value: Tensor) -> None:
        if value.is_cuda:
            self._host = torch.empty((), dtype=torch.bool, pin_memory=True)
            self._host.copy_(value, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = value, None
        self._value: Optional[bool] = None  # read once, then kept

    def is_set(self) -> bool:
        if self._value is None:
            if self._event is not None and not self._event.query():
                self._event.synchronize()
            self._value = bool(self._host)
        return self._value


def nonfinite(values: Tensor) -> DeviceFlag:
    return DeviceFlag(~torch.isfinite(values).all())


@dataclass
class BucketState:
    """Error-feedback state of one bucket layout: the method's per-coordinate tensors (EF21:
    this rank's ``h_local`` and the shared ``h``), all of the bucket's size."""

    signature: tuple
    tensors: dict
    loaded: bool = False  # restored by load_state_dict: its layout is the saved run's
    steps: int = 0  # compressed steps taken on this layout: keys its random streams
    # Small per-layout tensors that are not per-coordinate (saved; a new layout starts
    # without them): the compressor's hint (Compressor.hint_key), e.g. "topk_threshold".
    hints: dict = field(default_factory=dict)
    # Set by the step's decode: whether the aggregate held inf/NaN (transient, not saved).
    nonfinite: Optional[DeviceFlag] = field(default=None, compare=False)

    @functools.cached_property
    def layout_id(self) -> int:
        """A number for the layout, the same on every rank: keys its random streams."""
        return zlib.crc32(repr(self.signature).encode())

    @property
    def params(self) -> tuple:
        return self.signature[2]

    def move_to(self, device: torch.device) -> None:
        """Moves the state to the bucket's device (once, after a load onto another device)."""
        if any(t.device != device for t in (*self.tensors.values(), *self.hints.values())):
            self.tensors = {n: t.to(device) for n, t in self.tensors.items()}
            self.hints = {n: t.to(device) for n, t in self.hints.items()}

    def poisoned(self) -> bool:
        return self.nonfinite is not None and self.nonfinite.is_set()

    def param_slices(self) -> dict:
        """{(name, shape): (offset, numel)} of the parameters in this layout."""
        slices, offset = {}, 0
        for name, shape in self.params:
            numel = math.prod(shape)
            slices[(name, tuple(shape))] = (offset, numel)
            offset += numel
        return slices


def as_signature(saved) -> tuple:
    """A bucket signature as stored by state_dict (serialisers may turn tuples into lists)."""
    dtype, numel, params = saved
    return (dtype, int(numel), tuple((name, tuple(shape)) for name, shape in params))


def _named(signature: tuple) -> bool:
    """Whether a layout is made of named parameters (a hierarchy's shard is not: its state
    cannot follow parameters into another layout)."""
    return bool(signature[2]) and all(name and not name.startswith("#") for name, _ in signature[2])


def covering_states(sources: list, signature: tuple) -> Optional[list]:
    """Loaded states whose layouts together make up exactly this bucket, in the order their
    parameters appear in it, or None.

    A resumed DDP model starts from its initial bucket layout, whose buckets may each hold
    several of the buckets the saved run had after its rebuild. Running each saved layout
    as a segment of the bucket selects, sends and updates exactly what the saved run would.
    """
    if not _named(signature):
        return None
    position = {param: i for i, param in enumerate(signature[2])}
    parts = [s for s in sources if s.loaded and s.signature[0] == signature[0] and all(p in position for p in s.params)]
    covered = sorted(position[p] for s in parts for p in s.params)
    if covered != list(range(len(position))):
        return None
    return sorted(parts, key=lambda s: position[s.params[0]])


def relayout(sources: list, signature: tuple, device: torch.device) -> Optional[BucketState]:
    """A state for a new layout made of the per-parameter slices of older ones, or None
    when a parameter is unknown (or unnamed) or a source is poisoned by inf/NaN."""
    if not _named(signature):
        return None
    slices = {}
    for old in sources:
        if old.signature[0] != signature[0]:
            continue
        for param, (offset, numel) in old.param_slices().items():
            slices.setdefault(param, (old, offset, numel))
    if any(param not in slices for param in signature[2]):
        return None
    parts = [slices[param] for param in signature[2]]
    if any(old.poisoned() for old, _, _ in parts):
        return None
    names = parts[0][0].tensors.keys()
    tensors = {name: torch.cat([old.tensors[name][o : o + n] for old, o, n in parts]).to(device) for name in names}
    return BucketState(signature, tensors, steps=max(old.steps for old, _, _ in parts))
