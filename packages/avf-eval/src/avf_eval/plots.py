"""Figures for reports: confusion matrices and prediction-vs-truth scatters, saved as PNG.

matplotlib is forced onto the Agg backend so reports render on headless machines (CI,
clusters) without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402


def plot_confusion(matrix: NDArray[np.integer], classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) with raw counts in each cell."""
    n = len(classes)
    support = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
    size = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=classes, rotation=90 if n > 6 else 45, ha="center" if n > 6 else "right", fontsize=8)
    ax.set_yticks(range(n), labels=classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if n <= 15:  # cell text is unreadable beyond that
        for t in range(n):
            for p in range(n):
                colour = "white" if normalised[t, p] > 0.5 else "black"
                ax.text(
                    p,
                    t,
                    f"{100 * normalised[t, p]:.0f}\n({matrix[t, p]})",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color=colour,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_regression(
    labels: NDArray[np.float64], outputs: NDArray[np.float64], dimensions: Sequence[str], path: Path, title: str
) -> Path:
    """One scatter per dimension: prediction against truth, with the identity line."""
    fig, axes = plt.subplots(1, len(dimensions), figsize=(3.6 * len(dimensions), 3.6), squeeze=False)
    for d, (ax, name) in enumerate(zip(axes[0], dimensions, strict=False)):
        ax.scatter(labels[:, d], outputs[:, d], s=4, alpha=0.4)
        low = float(min(labels[:, d].min(), outputs[:, d].min()))
        high = float(max(labels[:, d].max(), outputs[:, d].max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
