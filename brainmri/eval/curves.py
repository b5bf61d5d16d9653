"""Per-epoch history beside a checkpoint, shared by every trainer: ``history.csv`` and the frame of ``curves.png``."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402


def write_history_csv(history: list[dict], path: str | Path) -> None:
    """One row per epoch, the columns of the first row."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def epoch_panels(n: int = 2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A row of ``n`` panels, epochs along x (9 x 3.4 inches, as every curves.png)."""
    fig, axes = plt.subplots(1, n, figsize=(9, 3.4))
    return fig, list(axes)


def save_epoch_panels(fig: plt.Figure, panels: list[tuple[plt.Axes, str]], path: str | Path, legend_size: float | None = None) -> None:
    """Title, grid and legend each (axes, title) panel, then write the figure and close it."""
    for ax, title in panels:
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
