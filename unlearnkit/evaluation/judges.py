"""Judges: does an image still show the concept? The concept classifier on the embedded world, CLIP elsewhere."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import world
from .clip import clip_zero_shot, load_clip


FORGOT_BELOW = 0.2  # a run forgot when at most this share of forget-prompt images still shows the concept


def classifier_judges(task) -> bool:
    """Whether the concept classifier can judge `task`'s forgetting: it forgets a concept of the embedded world."""
    return task.forget_concept in world.KINDS.get(task.kind, ())


def forget_hits(images: torch.Tensor, task, classifier=None, clip=None) -> list[bool]:
    """Per image, whether it still shows `task.forget_concept`: the concept classifier on the embedded world's
    concepts, else CLIP zero-shot over the task's concepts (`clip`: a model from `load_clip`, or its path / hub id)."""
    if classifier_judges(task):
        from .classifier import load_classifier

        clf = classifier or load_classifier()
        return [p[task.kind] == task.forget_concept for p in clf.predict(images)]
    if clip is None:
        raise ValueError(f"task {task.name!r} is not on the embedded world: pass clip=<a CLIP model path or hub id> "
                         "to judge its images by zero-shot classification")
    clip = load_clip(clip) if isinstance(clip, (str, Path)) else clip
    labels = [task.forget_concept, *dict.fromkeys(task.retain_concepts)]
    return [p == task.forget_concept for p in clip_zero_shot(clip, images, labels)]


class DidNotForget(UserWarning):
    """`evaluate`'s warning for a model whose forget rate stayed above the threshold."""


def did_not_forget(forget_rate: float, threshold: float = None, name: str | None = None) -> str:
    """The warning for a run whose forget rate stayed above the threshold; `name` (the method or the run) opens it."""
    threshold = FORGOT_BELOW if threshold is None else threshold
    return (f"{name + ' ' if name else ''}did not forget: forget rate {forget_rate:.2f} (> {threshold:.2f}); its retention numbers say nothing "
            "about the cost of forgetting — train longer, raise lr, or try another method")


def _is_world(p: str) -> bool:
    try:
        world.parse(p)
        return True
    except ValueError:
        return False


class Judge:
    """One way of reading images: `forget_hits(images)` (does each still show the task's concept) and
    `retain_hits(images, prompts)` (does each show what its prompt names). `name` is 'classifier' or 'clip';
    `model` the concept classifier or the (CLIP model, processor) pair."""

    def __init__(self, name, model, task):
        self.name, self.model, self.task = name, model, task

    def forget_hits(self, images) -> list[bool]:
        key = {"classifier": "classifier", "clip": "clip"}[self.name]
        return forget_hits(images, self.task, **{key: self.model})

    def retain_hits(self, images, prompts) -> list[bool]:
        if self.name == "classifier":
            return [p == world.parse(q) for p, q in zip(self.model.predict(images), prompts)]
        concept = dict(zip(self.task.retain_prompts, self.task.retain_concepts))
        labels = [self.task.forget_concept, *dict.fromkeys(self.task.retain_concepts)]
        return [p == concept[q] for p, q in zip(clip_zero_shot(self.model, images, labels), prompts)]


def judge_for(task, retain_prompts, classifier=None, clip=None) -> Judge | None:
    """The judge of `task`: the concept classifier when every prompt is of the embedded world, else CLIP zero-shot
    when `clip` is given (and the task names its concepts), else None (no forget rate or accuracy)."""
    if task.kind in world.KINDS and all(_is_world(p) for p in list(retain_prompts) + task.forget_prompts[:1]):
        from .classifier import load_classifier

        return Judge("classifier", classifier or load_classifier(), task)
    if clip is not None and task.forget_concept and task.retain_concepts:
        return Judge("clip", load_clip(clip) if isinstance(clip, (str, Path)) else clip, task)
    return None
