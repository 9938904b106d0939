"""The one plotting helper of the reproduction figures (matplotlib, headless)."""

from pathlib import Path


def semilogy(path: Path, title: str, xlabel: str, ylabel: str, curves: list) -> Path:
    """One figure with a log-scale y axis of (label, x values or None, y values) curves, saved
    to path; returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, xs, ys in curves:
        ax.semilogy(*((ys,) if xs is None else (xs, ys)), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def steps(default: int, scale: float, least: int = 5) -> int:
    """A run length: ``default`` times ``scale`` (the test draws every figure at a small scale)."""
    return max(least, int(default * scale))
