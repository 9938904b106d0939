"""The launches of the trainer integration tests: for each trainer (Lightning, Accelerate, the
Hugging Face Trainer), one launch of 2 gloo processes on the CPU runs every scenario of its
module (``<trainer>_scenarios.py``: SCENARIOS, a list of functions) in a row and saves their
results; the tests read them. Starting processes and importing a trainer take seconds, so each
trainer gets one launch.

The processes look like torchrun's (MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE,
...), which is how every trainer finds an existing distributed run instead of starting its own.
"""

import importlib
import os
import socket
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddp_workers import shutdown

WORLD = 2


def scenario(runs: list, name: str) -> list:
    """Every rank's result of scenario ``name`` of a launch; a scenario that raised fails the test
    that reads it, with its traceback."""
    results = [rank[name] for rank in runs]
    for r in results:
        assert "error" not in r, r["error"]
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, result_dir: str, module: str, directory: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        GROUP_RANK="0",
        NODE_RANK="0",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    # A scenario that fails on one rank fails its peers in a minute instead of hanging the tests.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    for scenario in importlib.import_module(module).SCENARIOS:
        try:
            results[scenario.__name__] = scenario(rank, Path(directory))
        except Exception:  # noqa: BLE001 - the test that reads this scenario shows the traceback
            results[scenario.__name__] = {"error": traceback.format_exc()}
        dist.barrier()
    torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    shutdown()


def launch(module: str, directory: str) -> list:
    """Runs ``module``'s scenarios on 2 ranks; returns [rank 0's {scenario: result}, rank 1's]."""
    with tempfile.TemporaryDirectory() as result_dir:
        mp.spawn(_worker, args=(WORLD, _free_port(), result_dir, module, directory), nprocs=WORLD, join=True)
        return [torch.load(Path(result_dir) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
