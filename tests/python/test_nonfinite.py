"""Non-finite messages (issue 27, item 1): every compressor's ``nonfinite_in`` reads the gathered
messages in the dtype actually on the wire, for every bucket dtype, and agrees with what the
messages decode to; and the default configuration restarts an fp16 bucket after an overflow as
it does a float32 one."""

import math

import pytest
import torch
from conftest import DTYPES

import efcomm
from efcomm import (
    FP8,
    QSGD,
    Clip,
    Context,
    Identity,
    Induced,
    ChunkTopK,
    Int4,
    Int8,
    Natural,
    NonUniformRandK,
    RandK,
    ScaledSign,
    TopK,
)
from efcomm.cluster import Cluster
from efcomm.compressors import COMPRESSORS
from efcomm.state import default_compressor

# Two chunks of the compact layout (65536 entries each), so that its values start after two counts.
NUMEL = 70_001

# At least one instance of every registered compressor class; Top-k in every message format.
COMPRESSOR_CASES = [
    TopK(0.01),
    TopK(0.01, index_bits=16),
    default_compressor(),
    TopK(0.01, value_dtype=torch.float16, index_bits=16),
    TopK(0.01, value_dtype=torch.float16),
    TopK(0.01, value_dtype=torch.float32, index_bits=16),
    RandK(0.01),
    RandK(0.01, shared=False),
    NonUniformRandK(0.01),
    Identity(),
    Clip(tau=1.0),
    QSGD(levels=7, block=512),
    Natural(block=1024),
    ScaledSign(block=1024),
    Int8(block=256),
    FP8(block=256),
    Int4(block=64),
    QSGD(levels=7, block=512).scaled(),
    Induced(TopK(0.01), QSGD(levels=3, block=128)),
    ChunkTopK(0.02, bits=2),
    ChunkTopK(0.02, bits=4, chunk=1024),
]


def test_the_cases_cover_every_registered_compressor():
    assert {type(c) for c in COMPRESSOR_CASES} == set(COMPRESSORS)


def _bucket(kind: str, dtype: torch.dtype) -> torch.Tensor:
    """A bucket of ``dtype``: random values, and (``inf``, ``nan``) one every 50 entries and at
    the last entry, which the compact layout sends last (read from the wrong offset, it is
    missed); or (``large``) one value near the dtype's largest, finite, at the last entry: its
    bits read as another 16-bit dtype are inf/NaN."""
    x = torch.randn(NUMEL, generator=torch.Generator().manual_seed(1))
    if kind == "large":
        x[-1] = torch.finfo(dtype).max / 8
    elif kind != "finite":
        special = math.inf if kind == "inf" else math.nan
        x[::50] = special
        x[-1] = -special
    return x.to(dtype)


def _gathered(c, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Two ranks' messages: rank 0's bucket of ``kind``, rank 1's finite."""
    rows = []
    for rank, rank_kind in enumerate((kind, "finite")):
        x = _bucket(rank_kind, dtype)
        rows.append(c.encode_(x, None, Context(seed=3, step=0, bucket=0, rank=rank)))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["inf", "nan", "large", "finite"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", COMPRESSOR_CASES, ids=repr)
def test_nonfinite_in_reads_the_dtype_on_the_wire(c, dtype, kind):
    """nonfinite_in is None (the caller checks the decoded result), or it says whether the
    messages decode to a non-finite aggregate. Top-k sends inf/NaN first, so it must see them."""
    gathered = _gathered(c, kind, dtype)
    found = c.nonfinite_in(gathered, NUMEL, dtype)
    decoded = torch.zeros(NUMEL, dtype=dtype)
    c.decode_add_(decoded, gathered, Context(seed=3, step=0, bucket=0, rank=0))
    decoded_nonfinite = not bool(torch.isfinite(decoded).all())
    if isinstance(c, (TopK, Identity, Clip)):
        assert found is not None
        if kind != "large":  # (a large float32 value narrowed to fp16 values is an inf on the wire)
            assert decoded_nonfinite == (kind in ("inf", "nan"))  # the oracle itself
    if found is not None:
        assert found.dtype == torch.bool and found.dim() == 0
        assert bool(found) == decoded_nonfinite, (bool(found), decoded_nonfinite)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_the_default_restarts_after_an_overflow_in_every_bucket_dtype(dtype):
    """Issue 27's reproduction: the default configuration on 2 ranks, a bucket of 8192 entries,
    an inf on rank 0 at step 1. The step-1 aggregate is non-finite (the step GradScaler skips);
    the next step restarts the state on every rank and its output is finite again, in fp16 as in
    float32 (before the fix, an fp16 bucket stayed non-finite from step 1 on)."""
    cluster = Cluster.create(2, "ef", default_compressor())
    gen = torch.Generator().manual_seed(0)
    finite_steps = []
    for step in range(5):
        grads = [torch.randn(8192, generator=gen).to(dtype) for _ in range(2)]
        if step == 1:
            grads[0][100] = math.inf
        outs = cluster.step_bucket(grads)
        finite_steps.append(all(bool(torch.isfinite(o).all()) for o in outs))
    assert finite_steps == [True, False, True, True, True]
    assert [s.stats.nonfinite_resets for s in cluster.states] == [1, 1]


def test_the_default_is_ef_with_top1_in_the_compact_message():
    """efcomm.register's and EFState's default (docs/convergence.md says why): classic EF with
    Top-1% in bf16 values and 16-bit offsets; for 8192 float32 entries, 82 kept: a 4-byte count,
    82 bf16 values and 82 offsets, by hand 4 + 164 + 164 bytes."""
    state = efcomm.EFState()
    assert state.method == "ef"
    assert state.compressor == TopK(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)
    assert state.compressor.message_nbytes(8192, torch.float32) == 4 + 164 + 164
