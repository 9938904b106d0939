"""``python -m efcomm.sim --out docs/figures``: draws every reproduction figure (efcomm.sim.figures)."""

from .figures import main

main()
