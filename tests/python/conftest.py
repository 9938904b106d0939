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


def launched_once(tmp_path_factory, name: str, run):
    """``run(directory)`` (multi-process launches), once for the whole session. Under
    pytest-xdist (the README's ``-n 2``) the first worker that needs the results runs it and
    the others read its results (the folder above a worker's base temp is the session's, shared
    by its workers)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return run(str(tmp_path_factory.mktemp(name)))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / f"{name}_launches.lock")):
        done = shared / f"{name}_launches.pt"
        if done.exists():
            return torch.load(done, weights_only=False)
        (shared / name).mkdir()
        results = run(str(shared / name))
        torch.save(results, done)
        return results


@pytest.fixture(scope="session")
def ddp_launches(tmp_path_factory):
    """The multi-process DDP scenarios (tests/python/ddp_workers.py: LAUNCHES), run once for
    the whole session: {launch: [per-rank {scenario: result}]}."""
    from ddp_workers import run_launches

    return launched_once(tmp_path_factory, "ddp", run_launches)


@pytest.fixture(scope="session")
def fsdp_launches(tmp_path_factory):
    """The multi-process FSDP2 scenarios (tests/python/fsdp_workers.py: LAUNCHES), run once for
    the whole session."""
    from fsdp_workers import run_launches

    return launched_once(tmp_path_factory, "fsdp", run_launches)


@pytest.fixture(scope="session")
def trainer_launch(tmp_path_factory):
    """``trainer_launch(module)``: the scenarios of a trainer integration (tests/python/
    trainer_workers.py runs ``module``'s SCENARIOS on 2 ranks), once for the whole session:
    [rank 0's {scenario: result}, rank 1's]."""
    from trainer_workers import launch

    return lambda module: launched_once(tmp_path_factory, module, lambda directory: launch(module, directory))
