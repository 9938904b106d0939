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


class LazyLaunches:
    """The multi-process FSDP2 scenarios' results (tests/python/fsdp_workers.py: LAUNCHES),
    ``[launch]``: every rank's, each launch run when a test first reads it, after the launch whose
    files it reads. Tests that read one launch run only what it needs (the mutation check runs
    a few such tests per mutation). With ``shared`` (pytest-xdist), a launch runs once for the
    session, in the first worker that needs it, and the others read its results, as
    ``ddp_launches`` does."""

    def __init__(self, directory, shared=None) -> None:
        self.directory, self.shared, self.results = directory, shared, {}
        self.failed: dict = {}  # launch -> its error: a launch that failed is not run again

    def __getitem__(self, name: str) -> list:
        from fsdp_workers import LAUNCHES

        after = {launch[0]: launch[3] for launch in LAUNCHES}
        if name not in after:
            raise KeyError(f"fsdp_launches: no launch named {name!r} (the launches: {sorted(after)})")
        chain = [name]
        while after[chain[-1]] is not None:
            chain.append(after[chain[-1]])
        for launch in reversed(chain):
            if launch in self.failed:
                raise RuntimeError(f"fsdp_launches: launch {launch!r} failed") from self.failed[launch]
            try:
                self._ensure(launch)
            except Exception as error:
                self.failed[launch] = error
                raise
        return self.results[name]

    def _ensure(self, name: str) -> None:
        from fsdp_workers import run_launch

        if name in self.results:
            return
        if self.shared is None:
            self.results[name] = run_launch(str(self.directory), name)
            return
        with FileLock(str(self.shared / "fsdp_launches.lock")):
            done = self.shared / f"fsdp_launch_{name}.pt"
            if done.exists():
                self.results[name] = torch.load(done, weights_only=False)
                return
            (self.shared / "fsdp").mkdir(exist_ok=True)
            self.results[name] = run_launch(str(self.shared / "fsdp"), name)
            torch.save(self.results[name], done)


@pytest.fixture(scope="session")
def fsdp_launches(tmp_path_factory):
    """The multi-process FSDP2 scenarios, for the whole session (LazyLaunches)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return LazyLaunches(tmp_path_factory.mktemp("fsdp"))
    return LazyLaunches(None, tmp_path_factory.getbasetemp().parent)


@pytest.fixture(scope="session")
def trainer_launch(tmp_path_factory):
    """``trainer_launch(module)``: the scenarios of a trainer integration (tests/python/
    trainer_workers.py runs ``module``'s SCENARIOS on 2 ranks), once for the whole session:
    [rank 0's {scenario: result}, rank 1's]."""
    from trainer_workers import launch

    return lambda module: launched_once(tmp_path_factory, module, lambda directory: launch(module, directory))
