"""efcomm.sim: the research simulator. n workers in one process, driven through the very
methods and ops the DDP hook uses (efcomm.methods), on problems with known constants
(efcomm.sim.problems); the settings beyond plain data parallelism (participation,
asynchrony, bidirectional, personalized, second_order) and the reproduction figures
(figures, ``python -m efcomm.sim --out docs/figures``).

    from efcomm import TopK
    from efcomm.sim import problems, simulate
    history = simulate(problems.beznosikov_counterexample(), "ef21", TopK(k=1), steps=2000, lr=0.01)

``import efcomm`` loads none of this package; the product's modules never import it.
"""

from . import problems
from .core import History, ef21_stepsize, simulate, steps_to_reach, worker_grads_at

__all__ = ["History", "ef21_stepsize", "problems", "simulate", "steps_to_reach", "worker_grads_at"]
