"""Bidirectional compression: the server compresses its broadcast too, and bits are counted
both ways.

EF21-BC (Fatkhullin, Sokolov, Gorbunov, Li, Richtarik 2021, "EF21 with Bells & Whistles",
arXiv 2110.03294, the bidirectional extension; the same server-side 3PC step appears in
AdaCGD's extension, Makarenko et al. 2022, arXiv 2211.00188): workers run EF21 towards the
server, and the server runs an EF21 mechanism of its own on the aggregate it broadcasts:

    worker i:  c_i = C_w(g_i - h_i);  h_i += c_i                     (uplink: c_i)
    server:    h += (1/n) sum_j c_j;  b = C_s(h - w);  w += b          (downlink: b)
    everyone:  x <- x - lr w

w is the estimate of h that every worker holds (the same on every rank, as efcomm's h is in
the hook). Starts as efcomm's EF21 does: one dense exchange each way (h_i = g_i(x_0),
h = w = mean). With the identity as C_s, w = h and the method is EF21.
"""

import math

from ..compressors import Compressor
from .problems import Problem
from .simkit import Trace, apply_compressor, record


def ef21_bc(
    problem: Problem, worker_compressor: Compressor, server_compressor: Compressor, steps: int, lr: float, seed: int = 0
) -> Trace:
    """EF21-BC. ``bits_per_worker``: what each worker sent (mean); ``bits_down``: what each
    worker received from the server's broadcasts. The server's random streams are keyed as
    a rank of its own (rank n, bucket 1)."""
    n = problem.n
    x = problem.x0.clone().float()
    h_local = [g.clone() for g in problem.grads(x)]
    h = sum(h_local) / n
    w = h.clone()
    dense = 32.0 * problem.d
    trace, up, down = Trace(), dense, dense
    record(trace, problem, x, 0.0, 0.0)
    for step in range(steps):
        x = x - lr * w
        grads = problem.grads(x)
        for i in range(n):
            c, sent = apply_compressor(worker_compressor, grads[i] - h_local[i], seed=seed, step=step, bucket=0, rank=i)
            h_local[i] += c
            h += c / n
            up += sent / n
        b, sent = apply_compressor(server_compressor, h - w, seed=seed, step=step, bucket=1, rank=n)
        w += b
        down += sent
        record(trace, problem, x, up, down)
        if not math.isfinite(trace.x_norm[-1]):
            break
    return trace


def total_bits(trace: Trace, t: int) -> float:
    """Bits one worker sent and received up to record t."""
    return trace.bits_per_worker[t] + trace.bits_down[t]
