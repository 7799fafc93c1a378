"""The built-in tasks by name: the embedded world's (Figures 1 and 2) and Stable Diffusion's prompt files."""

from __future__ import annotations

from . import world
from .sd_tasks import SD_TASKS, sd_task
from .tasks import Task

# the built-in embedded tasks, mirroring the paper's Figure 1 (style) and Figure 2 (object)
BUILTIN = {
    "style": dict(forget="wavy", neighbour="striped"),
    "object": dict(forget="triangle", neighbour="square"),
}


def get_task(name: str) -> Task:
    """A built-in task: 'style' (forget the wavy style, watch striped) or 'object' (forget triangle, watch square).

    Stable Diffusion tasks ('sd-vangogh', 'sd-cat') come from prompt files, see `unlearnkit.sd_tasks`.
    """
    if name in BUILTIN:
        return world.task(name=name, **BUILTIN[name])
    if name in SD_TASKS:
        return sd_task(name)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join([*BUILTIN, *SD_TASKS])}")
