"""Estimating each rank's smoothness constant L_i, for EF21-W's weights w_i = L_i / sum_j L_j.

EF21-W (Richtarik, Gasanov, Burlachenko 2024, arXiv 2402.10774) weights worker i by its
smoothness constant L_i, the Lipschitz constant of grad f_i. A DDP run does not know the L_i,
so :func:`estimate_smoothness` measures them: on each rank, L_i is estimated as the largest
eigenvalue magnitude of the Hessian of the rank's own loss at the current parameters, by
power iteration with exact Hessian-vector products (double backward), averaged over the
rank's batches. The local Hessian's spectral norm is a lower bound of L_i (L_i is its
supremum over the domain); taken at the start of training it is the usual practical proxy.
The estimates are then all-gathered, so every rank builds the same weights.

    L = efcomm.estimate_smoothness(model, loss_fn, batches)      # one float per rank
    state = efcomm.register(ddp, efcomm.methods.EF21W.from_smoothness(L), efcomm.TopK(0.01))
"""

from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn


def local_hessian_norm(model: nn.Module, loss_fn: Callable, batch, iterations: int = 20, seed: int = 0) -> float:
    """||Hessian of loss_fn(model(inputs), targets)|| at the current parameters, by power
    iteration with Hessian-vector products (the top eigenvalue's magnitude)."""
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    estimate = 0.0
    for _ in range(iterations):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        norm = torch.sqrt(sum((x * x).sum() for x in hv))
        estimate = float(norm)
        if estimate == 0.0:
            break
        v = [x / norm for x in hv]
    return estimate


def estimate_smoothness(
    model: nn.Module,
    loss_fn: Callable,
    batches: Iterable,
    process_group: Optional[dist.ProcessGroup] = None,
    iterations: int = 20,
) -> list:
    """Every rank's estimated L_i (the mean of :func:`local_hessian_norm` over this rank's
    ``batches``), the same list on every rank. ``model`` is the plain module (not the DDP
    wrapper: its backward would all-reduce). Call it on every rank, before training."""
    values = [local_hessian_norm(model, loss_fn, batch, iterations) for batch in batches]
    if not values:
        raise ValueError("efcomm.estimate_smoothness: batches is empty")
    mine = sum(values) / len(values)
    if not dist.is_available() or not dist.is_initialized():
        return [mine]
    world = dist.get_world_size(process_group)
    device = next(model.parameters()).device
    backend = dist.get_backend(process_group)
    device = device if backend == "nccl" else torch.device("cpu")
    gathered = torch.empty(world, dtype=torch.float64, device=device)
    dist.all_gather_into_tensor(gathered, torch.tensor([mine], dtype=torch.float64, device=device), group=process_group)
    estimates = gathered.tolist()
    bad = [(rank, value) for rank, value in enumerate(estimates) if not value > 0.0]
    if bad:
        raise RuntimeError(f"efcomm.estimate_smoothness: ranks {bad} estimated a non-positive or non-finite L_i")
    return estimates
