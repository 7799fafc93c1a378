"""Every method of a figure on one task, cached and evaluated against the base."""

from __future__ import annotations

from ..evaluation.lpips import LPIPSDistance
from ..evaluation.suite import evaluate
from ..methods import canonical
from ..tasks import Task
from .cache import run_method
from .profiles import Profile, profile
from .tuned import FIGURE_METHODS


def compare_methods(base, task: Task, methods=tuple(FIGURE_METHODS), prof: Profile | str = "cpu", lpips=None,
                    cache_dir=None, progress=True, extras: dict | None = None, on: str = "eval") -> tuple[dict, dict]:
    """Unlearn `task` with each method (cached) and evaluate each against `base`; `extras` adds rows
    {display name: (method, overrides)}, e.g. `TABLE_EXTRAS`. `on`: evaluate's retain part ('eval', the held-out
    prompts; 'train'; 'both').

    Returns (pipelines, results): {display name: pipeline} with 'base' first, and {display name: evaluate dict}.
    """
    prof = profile(prof) if isinstance(prof, str) else prof
    lpips = lpips or LPIPSDistance()
    pipes, results = {"base": base}, {}
    results["base"] = evaluate(base, base, task, lpips=lpips, cache_dir=cache_dir, progress=progress, on=on,
                               **prof.evaluation)
    runs = [(FIGURE_METHODS.get(canonical(m), m), m, {}) for m in methods]
    runs += [(label, m, dict(kw)) for label, (m, kw) in (extras or {}).items()]
    for label, m, kw in runs:
        run = run_method(base, task, m, prof, cache_dir=cache_dir, progress=progress, **kw)
        pipes[label] = run.pipeline
        results[label] = evaluate(base, run.pipeline, task, lpips=lpips, cache_dir=cache_dir, progress=progress,
                                  on=on, name=label, **prof.evaluation)
        results[label]["train_seconds"] = run.seconds
    return pipes, results
