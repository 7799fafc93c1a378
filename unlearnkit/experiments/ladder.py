"""`run_until_forgotten`: one learning-rate ladder, the same for every method and kind, trained until forgotten."""

from __future__ import annotations

from ..methods import canonical, make_config
from ..tasks import Task
from ..train import UnlearnResult, split_settings
from .cache import _settings, run_method
from .profiles import Profile, profile


# `run_until_forgotten`'s ladder, the same for every method and every kind of concept: each rung trains until
# forgotten (`until_forgotten`: a check every `steps` steps, at most ESCALATE_STEPS × `steps`), at these multiples
# of the learning rate; the first rung whose check says forgotten is the run.
ESCALATION = (1.0, 3.0, 10.0)


ESCALATE_STEPS = 4


def run_until_forgotten(pipe, task: Task, method: str, prof: Profile | str = "cpu", cache_dir=None, progress=True,
                        like: str | None = None, **overrides) -> UnlearnResult:
    """`run_method` made to forget: its config (profile, tuned config or kind rule, `overrides`) trained until the
    concept is gone — checked every `steps` steps on held-out seeds (`evaluation.stopping.CHECK_SEEDS`, `CHECK_BELOW`), for at most
    `ESCALATE_STEPS` × `steps` — and where it is not, again at each learning-rate multiple of `ESCALATION`.

    Returns the first rung whose last check said forgotten, else the last rung (its `forget_checks` say so);
    `result.config` holds the rung's lr and step budget, `len(result.history)` the steps it took. Every rung is a
    cached `run_method` run. `like`: climb with another method's checks instead of this one's (an ablation keeps its
    parent's rung: `like="ovw"` for "ovw-nohelp", so the two differ only by L_help)."""
    prof = profile(prof) if isinstance(prof, str) else prof
    name = canonical(method)
    first = make_config(name, **split_settings(_settings(task, name, prof, True, overrides))[0])
    for mult in ESCALATION:
        rung = {**overrides, "lr": first.lr * mult, "steps": first.steps * ESCALATE_STEPS, "until_forgotten": first.steps}
        judge = run_method(pipe, task, like, prof, cache_dir=cache_dir, progress=progress, **rung) if like else None
        run = run_method(pipe, task, name, prof, cache_dir=cache_dir, progress=progress, **rung)
        if (judge or run).stopped_forgotten:
            break
    return run
