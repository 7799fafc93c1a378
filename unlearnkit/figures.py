"""Figures: one helper for the method comparison grids (Figures 1 and 2) and the base-model grid.

Rows share a prompt and a seed; the first column is the base model; under every other image is its
LPIPS to the base image of its row.

Every helper returns its matplotlib Figure and never picks a backend: in Jupyter the inline backend shows
the figure under the cell (end the call with `;` or assign it, or the returned Figure shows a second time),
and without a display matplotlib falls back to Agg by itself, so `path=` still writes the PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch

from .io import atomic_write


# backends that draw to files only: a figure made under them can never be shown
_FILE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def _finish(fig, path):
    """Save `fig` to `path` (when given) and return it."""
    if path:
        path = Path(path)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix[1:] or "png"))
    if matplotlib.get_backend().lower() in _FILE_BACKENDS:
        plt.close(fig)  # scripts and tests: drop it from pyplot's registry, or every call would stay in memory
    return fig


def comparison_grid(columns: dict[str, torch.Tensor], row_labels: list[str], lpips=None, title: str = "",
                    path: str | Path | None = None, base: str = "base"):
    """A grid: one column per model (`columns[name]` = [R,3,H,W] in [0,1]), one row per (prompt, seed).

    Under each non-base image: its LPIPS to the base image of the row (`lpips` an LPIPSDistance).
    Returns the matplotlib figure; with `path`, also saves it (PNG).
    """
    names = list(columns)
    if base not in columns:
        raise ValueError(f"columns must include the base model under {base!r}; got {names}")
    rows = len(row_labels)
    for n, x in columns.items():
        if len(x) != rows:
            raise ValueError(f"column {n!r} has {len(x)} images for {rows} rows")
    dist = {n: lpips(columns[base], x).tolist() for n, x in columns.items() if n != base} if lpips else {}
    fig, axes = plt.subplots(rows, len(names), figsize=(1.25 * len(names) + 1.6, 1.45 * rows), squeeze=False)
    for j, n in enumerate(names):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(columns[n][i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(n, fontsize=8)
            if n in dist:
                ax.set_xlabel(f"{dist[n][i]:.3f}", fontsize=7, labelpad=1)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=6, rotation=0, ha="right", va="center")
    net = getattr(lpips, "name", "")
    fig.suptitle(f"{title}\nnumber under an image: LPIPS to the base image of its row ({net})" if lpips else title,
                 fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def world_grid(images: torch.Tensor, row_labels, col_labels, panel_labels, title="", path=None):
    """Panels of a rows × cols grid each: images [P*R*C,3,H,W] panel-major, then row-major."""
    p, r, c = len(panel_labels), len(row_labels), len(col_labels)
    if len(images) != p * r * c:
        raise ValueError(f"expected {p * r * c} images for {p} panels of {r}x{c}, got {len(images)}")
    fig, axes = plt.subplots(r, p * c, figsize=(0.62 * p * c + 1, 0.7 * r + 0.8), squeeze=False)
    for k in range(p):
        for i in range(r):
            for j in range(c):
                ax = axes[i][k * c + j]
                ax.imshow(images[(k * r + i) * c + j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{panel_labels[k]}\n{col_labels[j]}" if j == c // 2 else col_labels[j], fontsize=6)
                if k == 0 and j == 0:
                    ax.set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.1)
    return _finish(fig, path)
