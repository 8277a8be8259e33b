"""Loss curves: the one drawer of a run's loss log, for the Gatys tool, training and the
experiments. matplotlib's object API with the Agg canvas: no pyplot, no process-wide
backend switch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_write

# the log keys drawn, with their line styles and legend labels
CURVES = (("loss", "k-", "total"), ("content", "C0-", "content"), ("style", "C3-", "style"),
          ("tv", "C2-", "tv"), ("saturation", "C1-", "saturation penalty"))


def running_mean(values, window: int) -> np.ndarray:
    """Trailing mean over at most ``window`` values: ``out[i] = mean(values[max(0, i−window+1) : i+1])``."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1:
        return v
    c = np.concatenate([[0.0], np.cumsum(v)])
    hi = np.arange(1, len(v) + 1)
    lo = np.maximum(0, hi - window)
    return (c[hi] - c[lo]) / (hi - lo)


def draw_losses(ax, records: list, x: str = "iteration", window: int = 1, fontsize=None):
    """The weighted terms of a loss log (total, content, style, TV, saturation; log scale) on a
    matplotlib axis against ``x`` (a key of the records), each a trailing mean over
    ``window`` records; dashed lines where a new scale starts (records with ``"scale"``)."""
    xs = [r[x] for r in records]
    for key, style, label in CURVES:
        values = [r.get(key, 0.0) for r in records]  # a term a log does not hold draws nothing
        ys = running_mean(values, window) if window > 1 else values
        if any(y > 0 for y in ys):
            ax.plot(xs, [y if y > 0 else np.nan for y in ys], style, lw=1.2, label=label)
    if records and "scale" in records[0]:
        for k in sorted({r["scale"] for r in records})[1:]:
            first = next(r[x] for r in records if r["scale"] == k)
            ax.axvline(first - 0.5, color="0.7", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel(x, fontsize=fontsize)
    ax.grid(True, which="both", alpha=0.3)
    if fontsize:
        ax.tick_params(labelsize=fontsize - 1)
    ax.legend(loc="upper right", fontsize=fontsize)


def plot_losses(records: list, path, x: str = "iteration", window: int = 1) -> Path:
    """``draw_losses`` as a 700 × 400 PNG at ``path``, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw_losses(ax, records, x=x, window=window)
    ax.set_ylabel("weighted loss" + (f" (running mean of {window})" if window > 1 else ""))
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
