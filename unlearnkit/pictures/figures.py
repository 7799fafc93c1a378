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
from matplotlib.colors import PowerNorm

from ..io import atomic_write


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
                    path: str | Path | None = None, base: str = "base", heatmaps: bool = True):
    """A grid: one column per model (`columns[name]` = [R,3,H,W] in [0,1]), one row per (prompt, seed).

    Under each non-base image: its LPIPS to the base image of the row (`lpips` an LPIPSDistance) and, with
    `heatmaps`, a row of LPIPS maps (`lpips.map`): where in the picture the model changed, on one colour scale.
    Returns the matplotlib figure; with `path`, also saves it (PNG).
    """
    names = list(columns)
    if base not in columns:
        raise ValueError(f"columns must include the base model under {base!r}; got {names}")
    rows = len(row_labels)
    for n, x in columns.items():
        if len(x) != rows:
            raise ValueError(f"column {n!r} has {len(x)} images for {rows} rows")
    others = [n for n in names if n != base]
    dist = {n: lpips(columns[base], columns[n]).tolist() for n in others} if lpips else {}
    maps = {n: lpips.map(columns[base], columns[n])[:, 0] for n in others} if lpips and heatmaps else {}
    vmax = max([float(m.max()) for m in maps.values()] + [1e-6])
    per_row = 2 if maps else 1
    fig, axes = plt.subplots(rows * per_row, len(names), figsize=(1.25 * len(names) + 1.6, 1.45 * rows * per_row),
                             squeeze=False)
    for j, n in enumerate(names):
        for i in range(rows):
            ax = axes[i * per_row][j]
            _show(ax, columns[n][i])
            if i == 0:
                ax.set_title(n, fontsize=8)
            if n in dist:
                ax.set_xlabel(f"{dist[n][i]:.3f}", fontsize=7, labelpad=1)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=6, rotation=0, ha="right", va="center")
            if maps:
                ax = axes[i * per_row + 1][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if n in maps:
                    # square-root colour scale: a small change stays visible beside a large one
                    heat = ax.imshow(maps[n][i].numpy(), cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=vmax),
                                     interpolation="nearest")
                else:
                    ax.set_frame_on(False)
                    if i == 0:
                        ax.text(0.5, 0.5, "LPIPS map\nto base →", fontsize=6, ha="center", va="center",
                                transform=ax.transAxes)
    net = getattr(lpips, "name", "")
    note = f"\nnumber under an image: LPIPS to the base image of its row ({net})" if lpips else ""
    if maps:
        note += f"\nbelow it, where it differs: its LPIPS map (square-root colour scale, 0 to {vmax:.3f})"
    fig.suptitle(title + note, fontsize=8)
    fig.tight_layout()
    if maps and others:
        fig.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02).ax.tick_params(labelsize=6)
    return _finish(fig, path)


def _show(ax, image):
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


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


def _yerr(values, cis):
    """matplotlib's yerr ([below], [above]) of points and their (lo, hi) intervals. Clipped at 0: matplotlib refuses
    a negative length, and an interval can miss its point by a rounding error, or by more (a percentile bootstrap
    interval need not hold the point it was drawn around)."""
    return [[max(0.0, v - lo) for v, (lo, _) in zip(values, cis)],
            [max(0.0, hi - v) for v, (_, hi) in zip(values, cis)]]


# how notebooks name evaluate's keys on an axis
LABELS = {"lpips_ret": "LPIPS_ret (↓)", "integrity": "I = 1 − LPIPS_ret (↑)", "retain_accuracy": "accuracy (↑)",
          "forget_rate": "forget rate (↓)", "fid": "FID, classifier features (↓)", "lpips_forget": "LPIPS_forget"}


def metric_curves(results: dict, keys=("lpips_ret", "retain_accuracy", "fid"), xlabel: str = "noise scale",
                  title: str = "", path=None):
    """One panel per metric `key` against x: `results` = {x: evaluate dict}; error bars from `key + "_ci"`
    where the dict has it (95% bootstrap over prompts × seeds), each value written beside its point."""
    xs = list(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ys = [results[x][key] for x in xs]
        cis = [results[x].get(key + "_ci") for x in xs]
        err = None
        if all(ci is not None for ci in cis):
            err = _yerr(ys, cis)
        ax.errorbar(range(len(xs)), ys, yerr=err, marker="o", ms=4, capsize=3, lw=1.2)
        for k, y in enumerate(ys):
            ax.annotate(f"{y:.3g}", (k, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        # one tick per x, evenly spaced: the scales are a geometric-ish ladder, 0 included
        ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs], fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(LABELS.get(key, key), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def ladder_figure(ladder: dict, title: str = "", path=None):
    """The LPIPS ladder (`probes.lpips_ladder`): each rung's image above a bar of its LPIPS to the first image."""
    names = list(ladder)
    fig = plt.figure(figsize=(1.45 * len(names) + 0.6, 3.6))
    grid = fig.add_gridspec(2, len(names), height_ratios=[1, 1.1])
    for j, n in enumerate(names):
        ax = fig.add_subplot(grid[0, j])
        _show(ax, ladder[n]["image"])
        ax.set_title(n, fontsize=8)
        ax.set_xlabel(f"{ladder[n]['prompt']}\nseed {ladder[n]['seed']}", fontsize=5.5, labelpad=2)
    ax = fig.add_subplot(grid[1, :])
    values = [ladder[n]["lpips"] for n in names]
    bars = ax.bar(range(len(names)), values, color=plt.cm.magma([0.15 + 0.7 * k / max(1, len(names) - 1)
                                                                  for k in range(len(names))]))
    ax.bar_label(bars, [f"{v:.3f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_ylabel("LPIPS to the first image", fontsize=7)
    ax.set_ylim(0, max(values + [1e-3]) * 1.25)
    ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def retain_spread(results: dict, title: str = "", path=None, sharey: bool = True):
    """Per retain concept, every pair's LPIPS to the base (evaluate's `retain_pairs`) as dots and their mean as
    a bar with its 95% bootstrap interval, one panel per entry of `results` = {label: evaluate dict}; concepts in
    evaluation order (neighbour first). `sharey=False` gives each panel its own scale (results of very different
    sizes)."""
    from ..evaluation.stats import bootstrap_ci

    width = max(3.2, 0.5 * _n_concepts(results) + 1.2)
    cols = min(4, len(results))  # four panels a row
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 2.6 * rows), squeeze=False, sharey=sharey)
    for ax in axes.ravel()[len(results):]:
        ax.set_visible(False)
    g = torch.Generator().manual_seed(0)  # the dots' horizontal jitter
    for ax, (label, r) in zip(axes.ravel(), results.items()):
        concepts = list(dict.fromkeys(p["concept"] for p in r["retain_pairs"]))
        for k, c in enumerate(concepts):
            v = torch.tensor([p["lpips"] for p in r["retain_pairs"] if p["concept"] == c])
            jitter = (torch.rand(len(v), generator=g) - 0.5) * 0.35
            mean = float(v.mean())
            ci = bootstrap_ci(v) if len(v) > 1 else (mean, mean)
            ax.bar(k, mean, width=0.6, color="#f3d9b1", zorder=1)
            ax.errorbar(k, mean, yerr=_yerr([mean], [ci]), color="#333333",
                        capsize=3, lw=1, zorder=3)
            ax.scatter(k + jitter, v, s=9, color="#7a1f5c", alpha=0.8, lw=0, zorder=2)
        ax.set_xticks(range(len(concepts)), concepts, fontsize=7, rotation=30)
        ax.set_title(f"{label}: LPIPS_ret {r['lpips_ret']:.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0] if sharey else axes.ravel()[:len(results)]:
        ax.set_ylabel("LPIPS to the base image", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def _n_concepts(results):
    return max(len({p["concept"] for p in r["retain_pairs"]}) for r in results.values())


def loss_curves(history: list[dict], title: str = "", path=None):
    """One panel per logged quantity of a training `history` (train.py's list of per-step dicts) against step."""
    keys = [k for k in history[0] if k != "step"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.2), squeeze=False)
    steps = [h.get("step", i) for i, h in enumerate(history)]
    for ax, k in zip(axes[0], keys):
        ax.plot(steps, [h[k] for h in history])
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def sequence_figure(rows: dict[str, list[dict]], title: str = "", path=None):
    """Sequential erasure (`sequence.evaluate_sequence` per method): LPIPS_ret against the stage with its 95%
    interval, then one panel per erased concept with its forget rate and interval against the stage (from the
    stage that erased it on). `rows` = {method label: rows}."""
    concepts = list(dict.fromkeys(c for rs in rows.values() for r in rs for c in r["forget_rates"]))
    fig, axes = plt.subplots(1, 1 + len(concepts), figsize=(3.2 * (1 + len(concepts)), 2.8), squeeze=False)
    for label, rs in rows.items():
        stages = [r["stage"] for r in rs]
        y = [r["lpips_ret"] for r in rs]
        axes[0][0].errorbar(stages, y, yerr=_yerr(y, [r["lpips_ret_ci"] for r in rs]), marker="o", ms=3, capsize=2,
                            label=label)
        for ax, c in zip(axes[0][1:], concepts):
            pts = [(r["stage"], r["forget_rates"][c], (r.get("forget_rates_ci") or {}).get(c)) for r in rs
                   if r["forget_rates"].get(c) is not None]
            if pts:
                x, v, ci = zip(*pts)
                ax.errorbar(x, v, yerr=_yerr(v, [b or (a, a) for a, b in zip(v, ci)]), marker="o", ms=3, capsize=2,
                            label=label)
    axes[0][0].set_title("LPIPS_ret vs the original base", fontsize=8)
    for ax, c in zip(axes[0][1:], concepts):
        ax.set_title(f"forget rate of {c!r}", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
    stage_names = [f"{r['stage']}: {r['concept']}" for r in next(iter(rows.values()))]
    for ax in axes[0]:
        ax.set_xticks(range(1, len(stage_names) + 1), stage_names, fontsize=7)
        ax.set_xlabel("after stage", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def attack_figure(results: dict[str, dict[str, dict]], title: str = "", path=None):
    """Recovery attacks: per task, the forget rate without attack and the recovered forget rate with the learned
    word, per method (95% intervals). `results` = {task: {method label: attacks.attack dict}}."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 2.8), squeeze=False)
    for ax, (task, per) in zip(axes[0], results.items()):
        for k, (label, r) in enumerate(per.items()):
            for dx, key, colour in ((-0.18, "forget_rate", "#9bb7d4"), (0.18, "recovered_forget_rate", "#7a1f5c")):
                ax.bar(k + dx, r[key], width=0.34, color=colour, yerr=_yerr([r[key]], [r[key + "_ci"]]), capsize=2,
                       label=("no attack" if key == "forget_rate" else "learned word") if k == 0 else None)
        ax.set_xticks(range(len(per)), list(per), fontsize=7, rotation=30)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}: share showing the concept", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def block_bars(values: dict[str, dict[str, float]], ylabel: str, title: str = "", path=None, log: bool = False):
    """Bars per UNet block, one group per entry of `values` = {label: {block: value}} (e.g. weight change, mask
    share, Fisher mass)."""
    blocks = list(dict.fromkeys(b for v in values.values() for b in v))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(blocks) * max(1, len(values)) + 1.5), 2.6))
    width = 0.8 / max(1, len(values))
    for k, (label, v) in enumerate(values.items()):
        ax.bar([i + k * width for i in range(len(blocks))], [v.get(b, 0.0) for b in blocks], width=width, label=label)
    ax.set_xticks([i + width * (len(values) - 1) / 2 for i in range(len(blocks))], blocks, fontsize=7, rotation=30)
    ax.set_ylabel(ylabel, fontsize=7)
    if log:
        ax.set_yscale("log")
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    if len(values) > 1:
        ax.legend(fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def saddle_dual(history: list[dict], title: str = "", path=None):
    """Saddle's game: the constrained loss (L_F, or the overwrite / ESD loss) against its bound τ, and the
    multiplier μ on a second axis, per step."""
    key = "forget_loss" if "forget_loss" in history[0] else "constraint_loss"
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot(steps, [h[key] for h in history], color="#7a1f5c", label=key.replace("_", " "))
    ax.plot(steps, [h["tau"] for h in history], color="#7a1f5c", ls="--", label="τ")
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=7)
    mu = ax.twinx()
    mu.plot(steps, [h["mu"] for h in history], color="#2a6f97", label="μ")
    mu.set_ylabel("μ", fontsize=7, color="#2a6f97")
    mu.tick_params(labelsize=7)
    lines = ax.get_lines() + mu.get_lines()  # one legend for both axes, inside the plot, clear of the title
    mu.legend(lines, [ln.get_label() for ln in lines], fontsize=6, loc="upper right", frameon=False)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def image_table(rows: dict[str, torch.Tensor], col_labels: list[str], title: str = "", path=None):
    """A grid of images: one row per entry of `rows` = {label: [C,3,H,W] in [0,1]}, one column per label."""
    fig, axes = plt.subplots(len(rows), len(col_labels), figsize=(1.25 * len(col_labels) + 1.6, 1.25 * len(rows)),
                             squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(len(col_labels)):
            _show(axes[r][c], images[c])
            if r == 0:
                axes[r][c].set_title(col_labels[c], fontsize=7)
        axes[r][0].text(-0.1, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)
