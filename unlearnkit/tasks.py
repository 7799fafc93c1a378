"""A task: what to forget, what to retain, and the anchors the forget prompts map to."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Task:
    """Prompts of one unlearning experiment.

    `anchor_prompts[i]` is `forget_prompts[i]` with the concept replaced by a neutral one. The retain
    prompts whose concept is `neighbour_concept` come first: they are the ones most at risk.
    """

    name: str
    forget_prompts: list[str]
    retain_prompts: list[str]
    anchor_prompts: list[str] = field(default_factory=list)
    forget_concept: str | None = None  # the word being forgotten, when the task knows it
    neighbour_concept: str | None = None  # the retain concept to watch first
    kind: str | None = None  # 'object', 'colour' or 'style' on the embedded world
    retain_concepts: list[str] = field(default_factory=list)  # the concept of each retain prompt (per-concept LPIPS)

    def __post_init__(self):
        self.forget_prompts = list(self.forget_prompts)
        self.retain_prompts = list(self.retain_prompts)
        self.anchor_prompts = list(self.anchor_prompts)
        self.retain_concepts = list(self.retain_concepts)
        if self.retain_concepts and len(self.retain_concepts) != len(self.retain_prompts):
            raise ValueError(f"task {self.name!r}: retain_concepts ({len(self.retain_concepts)}) must name the "
                             f"concept of each of the {len(self.retain_prompts)} retain prompts")
        if not self.forget_prompts:
            raise ValueError(f"task {self.name!r}: forget_prompts is empty; give at least one prompt to forget")
        if not self.retain_prompts:
            raise ValueError(f"task {self.name!r}: retain_prompts is empty; give at least one prompt to retain")
        for label, prompts in (("forget_prompts", self.forget_prompts), ("retain_prompts", self.retain_prompts),
                               ("anchor_prompts", self.anchor_prompts)):
            bad = [p for p in prompts if not isinstance(p, str)]
            if bad:
                raise ValueError(f"task {self.name!r}: {label} must be strings, got {bad[0]!r}")
        repeated = sorted(set(self.forget_prompts) & set(self.retain_prompts))
        if repeated:
            raise ValueError(
                f"task {self.name!r}: retain_prompts repeat forget prompts ({repeated[0]!r}"
                f"{f' and {len(repeated) - 1} more' if len(repeated) > 1 else ''}); remove them from retain_prompts"
            )
        if self.anchor_prompts and len(self.anchor_prompts) != len(self.forget_prompts):
            raise ValueError(
                f"task {self.name!r}: anchor_prompts ({len(self.anchor_prompts)}) are not aligned with "
                f"forget_prompts ({len(self.forget_prompts)}); give one anchor per forget prompt, in the same order"
            )

    @property
    def neighbour_prompts(self) -> list[str]:
        """Retain prompts that name the neighbour concept (empty when there is none)."""
        if self.neighbour_concept is None:
            return []
        if self.retain_concepts:
            return [p for p, c in zip(self.retain_prompts, self.retain_concepts) if c == self.neighbour_concept]
        return [p for p in self.retain_prompts if self.neighbour_concept in p.replace(",", " ").split()]


# the built-in embedded tasks, mirroring the paper's Figure 1 (style) and Figure 2 (object)
BUILTIN = {
    "style": dict(forget="wavy", neighbour="striped"),
    "object": dict(forget="triangle", neighbour="square"),
}


def get_task(name: str) -> Task:
    """A built-in task: 'style' (forget the wavy style, watch striped) or 'object' (forget triangle, watch square).

    Stable Diffusion tasks ('sd-vangogh', 'sd-cat') come from prompt files, see `unlearnkit.sd_tasks`.
    """
    from . import world

    if name in BUILTIN:
        return world.task(name=name, **BUILTIN[name])
    from .sd_tasks import SD_TASKS, sd_task

    if name in SD_TASKS:
        return sd_task(name)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join([*BUILTIN, *SD_TASKS])}")
