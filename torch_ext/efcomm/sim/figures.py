"""The simulator's reproduction figures: ``python -m efcomm.sim.figures --all --out docs/figures``
(or ``python -m efcomm.sim --out docs/figures``) draws every figure of docs/simulator.md; each
draws a claim that tests/python/test_sim*.py asserts at smaller sizes."""

import argparse
from pathlib import Path
from typing import Optional

import torch

from . import figures_ef, figures_settings

FIGURES = {**figures_ef.FIGURES, **figures_settings.FIGURES}


def figures(out: Path, scale: float = 1.0, only: Optional[list] = None) -> list:
    """Draws the figures named in ``only`` (default: all, in FIGURES order) into ``out``, with
    every run ``scale`` times its default length; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"figures: unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    return [draw(out, scale) for name, draw in FIGURES.items() if only is None or name in only]


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m efcomm.sim.figures", description="Draw efcomm's simulator reproduction figures."
    )
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--scale", type=float, default=1.0, help="run lengths times this (e.g. 0.1 for a quick look)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every figure (the default)")
    which.add_argument("--only", nargs="*", help=f"figure names, of {list(FIGURES)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the simulations use tiny tensors: threads only contend
    for path in figures(Path(args.out), args.scale, args.only):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
