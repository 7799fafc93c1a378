"""A task: what to forget, what to retain, and the anchors the forget prompts map to.

Retain prompts come in two parts: the training part (`Task.retain_train`), the only one a method
sees, and the held-out part (`Task.retain_eval`), the one `evaluate` reads by default. The rule is fixed: within each
retain concept, in the task's order, the 2nd, 5th, 8th, ... prompt is held out (`held_out_by_rule`, `HOLD_OUT_EVERY`
= 3), so every concept with two or more prompts, the neighbour included, is in both parts. `Task(..., held_out=[])`
has no split; `held_out=[...]` names the held-out prompts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace


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
    # words a forget prompt's concept may be swapped for when a method relabels it (SalUn's c_rand); empty:
    # relabelling picks a random retain prompt instead
    relabel_concepts: list[str] = field(default_factory=list)
    # retain prompts kept out of training. None (default): the fixed rule (`held_out_by_rule`, a third of each
    # concept); [] : no split, training and evaluation read every retain prompt; a list: exactly those
    held_out: list[str] | None = None

    def __post_init__(self):
        self.forget_prompts = list(self.forget_prompts)
        self.retain_prompts = list(self.retain_prompts)
        self.anchor_prompts = list(self.anchor_prompts)
        self.retain_concepts = list(self.retain_concepts)
        self.relabel_concepts = list(self.relabel_concepts)
        if self.relabel_concepts and not self.forget_concept:
            raise ValueError(f"task {self.name!r}: relabel_concepts need forget_concept (the word they replace)")
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
        self.held_out = held_out_by_rule(self) if self.held_out is None else list(self.held_out)
        if self.held_out:
            unknown = [p for p in self.held_out if p not in set(self.retain_prompts)]
            if unknown:
                raise ValueError(f"task {self.name!r}: held_out names {unknown[0]!r}, which is not a retain prompt; "
                                 "held_out must be a subset of retain_prompts (to drop retain prompts from a task, "
                                 "use task.keep_retain(prompts), which keeps the split on what stays)")
            if len(set(self.held_out)) >= len(set(self.retain_prompts)):
                raise ValueError(f"task {self.name!r}: held_out holds every retain prompt, so a method would train "
                                 "on none; hold out fewer (held_out=None holds out a third of each concept)")
        if self.anchor_prompts and len(self.anchor_prompts) != len(self.forget_prompts):
            raise ValueError(
                f"task {self.name!r}: anchor_prompts ({len(self.anchor_prompts)}) are not aligned with "
                f"forget_prompts ({len(self.forget_prompts)}); give one anchor per forget prompt, in the same order"
            )

    @property
    def retain_train(self) -> list[str]:
        """The retain prompts a method trains on: all but the held-out ones."""
        held = set(self.held_out)
        return [p for p in self.retain_prompts if p not in held]

    @property
    def retain_eval(self) -> list[str]:
        """The retain prompts `evaluate` reads by default: the held-out ones, in retain order (neighbour first);
        every retain prompt when the task has no split."""
        if not self.held_out:
            return list(self.retain_prompts)
        held = set(self.held_out)
        return [p for p in self.retain_prompts if p in held]

    def concept_of(self, prompt: str) -> str | None:
        """The retain concept of `prompt` (None when the task names no concepts or `prompt` is not retained)."""
        return dict(zip(self.retain_prompts, self.retain_concepts)).get(prompt)

    def training_view(self) -> Task:
        """This task as a method sees it: the training part of the retain prompts, and no held-out part."""
        return self.keep_retain(self.retain_train) if self.held_out else self

    def keep_retain(self, prompts) -> Task:
        """This task with only the retain prompts in `prompts` (order kept), the split kept on what stays."""
        keep = set(prompts)
        idx = [i for i, p in enumerate(self.retain_prompts) if p in keep]
        return replace(self, retain_prompts=[self.retain_prompts[i] for i in idx],
                       retain_concepts=[self.retain_concepts[i] for i in idx] if self.retain_concepts else [],
                       held_out=[p for p in self.held_out if p in keep])

    @property
    def neighbour_prompts(self) -> list[str]:
        """Retain prompts that name the neighbour concept (empty when there is none)."""
        if self.neighbour_concept is None:
            return []
        if self.retain_concepts:
            return [p for p, c in zip(self.retain_prompts, self.retain_concepts) if c == self.neighbour_concept]
        return [p for p in self.retain_prompts if self.neighbour_concept in p.replace(",", " ").split()]

    def swap(self, prompt: str, concept: str) -> str:
        """`prompt` with the forget concept's word replaced by `concept` (whole words only)."""
        if not self.forget_concept:
            raise ValueError(f"task {self.name!r} has no forget_concept to swap; set it")
        return re.sub(rf"\b{re.escape(self.forget_concept)}\b", concept, prompt)

    def relabel(self, prompt: str, rng: random.Random) -> str:
        """SalUn's random label c_rand for a forget prompt: the concept swapped for a random one of
        `relabel_concepts`, or (without them) a random retain prompt."""
        if self.relabel_concepts:
            return self.swap(prompt, rng.choice(self.relabel_concepts))
        return rng.choice(self.retain_prompts)

    def head(self, max_forget: int | None = None, max_retain: int | None = None) -> Task:
        """This task cut to its first `max_forget` forget prompts (anchors alike) and `max_retain` retain prompts."""
        f, r = slice(max_forget), slice(max_retain)
        cut = replace(self, forget_prompts=self.forget_prompts[f], anchor_prompts=self.anchor_prompts[f])
        return cut.keep_retain(self.retain_train[r] + self.retain_eval[r])  # each part cut alike (no split: one)


HOLD_OUT_EVERY = 3  # the rule holds out the 2nd, 5th, 8th, ... prompt of each retain concept


def held_out_by_rule(task: Task, every: int = HOLD_OUT_EVERY) -> list[str]:
    """The retain prompts the fixed rule holds out for evaluation, stratified by concept: within each concept, in
    the task's order, positions 1, 1 + every, 1 + 2·every, ... (a third for every = 3). A concept with one prompt
    stays in training only. A task without `retain_concepts` splits its list as one concept."""
    if every < 2:
        raise ValueError(f"held_out_by_rule(every={every}): hold out one prompt in `every` >= 2 of each concept")
    concepts = task.retain_concepts or ["retain"] * len(task.retain_prompts)
    seen, held = {}, []
    for p, c in zip(task.retain_prompts, concepts):
        i = seen[c] = seen.get(c, -1) + 1
        if i % every == 1:
            held.append(p)
    return held
