"""Where a notebook's figure goes and which (prompt, seed) rows it shows."""

from __future__ import annotations

from pathlib import Path

from ..data import cached_sample_pairs, default_cache_dir
from ..experiments.profiles import Profile, profile
from ..tasks import Task


def figure_path(prof: Profile | str, figures_dir: str | Path, filename: str) -> Path:
    """Where a notebook saves a figure: `figures_dir/filename` on the cpu profile (the committed reproduction),
    `figures_dir/<stem>_<profile><suffix>` on the others (table1_full.md, fig1_style_gpu.png), or a scratch folder
    under the smoke profile (so that tests never overwrite the committed figures)."""
    prof = profile(prof) if isinstance(prof, str) else prof
    folder = Path(figures_dir) if prof.name != "smoke" else default_cache_dir() / "smoke-figures"
    folder.mkdir(parents=True, exist_ok=True)
    if prof.name not in ("cpu", "smoke"):
        filename = f"{Path(filename).stem}_{prof.name}{Path(filename).suffix}"
    return folder / filename


def figure_rows(task: Task, seeds, n_prompts: int = 2) -> tuple[list[str], list[int], list[str]]:
    """Rows of Figures 1/2: a forget prompt, then the same prompt with the neighbour concept, for each seed.

    Returns aligned (prompts, seeds, labels).
    """
    prompts, out_seeds, labels = [], [], []
    # spread over the forget list, so the rows show different colours / objects
    step = max(1, len(task.forget_prompts) // n_prompts)
    picked = task.forget_prompts[step // 2::step][:n_prompts]
    for k, p in enumerate(picked):
        s = int(seeds[k % len(seeds)])
        pair = [p]
        if task.neighbour_concept and task.forget_concept:
            pair.append(task.swap(p, task.neighbour_concept))
        elif task.neighbour_prompts:
            pair.append(task.neighbour_prompts[k % len(task.neighbour_prompts)])
        for q in pair:
            prompts.append(q)
            out_seeds.append(s)
            labels.append(f"{q}\nseed {s}")
    return prompts, out_seeds, labels


def figure_columns(pipes: dict, prompts, seeds, prof: Profile | str = "cpu", cache_dir=None) -> dict:
    """{name: images [R,3,H,W]} for each pipeline on aligned (prompts, seeds), through the sample cache."""
    prof = profile(prof) if isinstance(prof, str) else prof
    return {n: cached_sample_pairs(p, prompts, seeds, prof.sample_steps, prof.guidance_scale, cache_dir)
            for n, p in pipes.items()}
