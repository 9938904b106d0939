import os

import pytest
import torch
from filelock import FileLock

# Importing efcomm loads the native library; a broken build fails the whole run here.
import efcomm  # noqa: F401

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' tensors are small: one intra-op thread is much faster than several on a
    busy 2-core machine (the CI machine), and the results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ddp_launches(tmp_path_factory):
    """The multi-process DDP scenarios (tests/python/ddp_workers.py: LAUNCHES), run once for
    the whole session: {launch: [per-rank {scenario: result}]}. Under pytest-xdist (the README's
    ``-n 2``) the first worker that needs them runs them and the others read its results (the
    folder above a worker's base temp is the session's, shared by its workers)."""
    from ddp_workers import run_launches

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return run_launches(str(tmp_path_factory.mktemp("ddp")))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / "ddp_launches.lock")):
        done = shared / "ddp_launches.pt"
        if done.exists():
            return torch.load(done, weights_only=False)
        (shared / "ddp").mkdir()
        results = run_launches(str(shared / "ddp"))
        torch.save(results, done)
        return results


@pytest.fixture(scope="session")
def fsdp_launches(tmp_path_factory):
    """The multi-process FSDP2 scenarios (tests/python/fsdp_workers.py: LAUNCHES), run once for
    the whole session, shared by pytest-xdist workers as ``ddp_launches`` is."""
    from fsdp_workers import run_launches

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return run_launches(str(tmp_path_factory.mktemp("fsdp")))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / "fsdp_launches.lock")):
        done = shared / "fsdp_launches.pt"
        if done.exists():
            return torch.load(done, weights_only=False)
        (shared / "fsdp").mkdir()
        results = run_launches(str(shared / "fsdp"))
        torch.save(results, done)
        return results
