"""A task: what to forget, what to retain, and the anchors the forget prompts map to."""

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
        return replace(self, forget_prompts=self.forget_prompts[f], anchor_prompts=self.anchor_prompts[f],
                       retain_prompts=self.retain_prompts[r], retain_concepts=self.retain_concepts[r])
