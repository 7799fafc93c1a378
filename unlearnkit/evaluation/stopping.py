"""Stopping rules the loop is handed (`unlearn(..., stop=...)`): it calls one every `every` steps and ends the run
when it says so. The loop itself knows nothing of images, classifiers or thresholds.

A rule is a callable `rule(pipeline, task, config) -> (log, done)` with an int `every`, a `key()` (its identity:
part of a run's checkpoint and cache key) and, optionally, `validate(task)` (refuse a task before any work).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sampling import NOISE, grid, sample_pairs
from .judges import classifier_judges, forget_hits

# the seeds of `until_forgotten`'s check: held out from the training data (seeds 0 .. data_seeds-1) and from every
# profile's evaluation (0 .. 3), so the run that stops is judged afterwards on images its check never saw. Two: on
# one held-out seed, OVW on yellow after 100 steps scored 0.03 while the evaluation's seed still saw 0.30 (2026-11-30)
CHECK_SEEDS = (1000, 1001)
# the check's bound: half the evaluation's (judges.FORGOT_BELOW = 0.2). A check is a sample of 50-60 images, the
# evaluation another: stopped at the first check <= 0.2, ESD on *cross* checked 0.18 and evaluated 0.32 (2026-11-30)
CHECK_BELOW = 0.1


@dataclass
class UntilForgotten:
    """Train until forgotten: every `every` steps, sample the forget prompts on `seeds` (the run's `data_steps` DDIM
    steps, guidance `data_guidance`), and stop once the concept classifier sees the concept in at most `below` of
    them. Logs the rate as `forget_check`. Embedded-world concepts only (the classifier judges them)."""

    every: int
    below: float | None = None  # None: CHECK_BELOW
    seeds: tuple = CHECK_SEEDS
    classifier: object = None  # the concept classifier (default: the shipped one, loaded at the first check)
    noise: str = "shared"  # the check images' noise (`sampling.NOISE`): one per seed, or one per image

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every <= 0:
            raise ValueError(f"until_forgotten takes a check interval in steps > 0, got {self.every!r}")
        if self.below is not None and not 0 <= self.below < 1:
            raise ValueError(f"until_forgotten's bound must be in [0, 1), got {self.below}")
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.noise not in NOISE:
            raise ValueError(f"until_forgotten's noise must be one of {', '.join(NOISE)}, got {self.noise!r}")

    @property
    def bound(self) -> float:
        return CHECK_BELOW if self.below is None else self.below

    def key(self) -> dict:
        key = {"rule": "until_forgotten", "every": self.every, "below": self.bound, "seeds": list(self.seeds)}
        return key if self.noise == "shared" else {**key, "noise": self.noise}  # runs from before keep their keys

    def validate(self, task) -> None:
        if not classifier_judges(task):
            raise ValueError(f"until_forgotten={self.every}: task {task.name!r} forgets {task.forget_concept!r}, which "
                             "the embedded world's classifier cannot judge; pass until_forgotten=0 (no stop=) and "
                             "choose `steps` (evaluate(..., clip=...) judges it afterwards)")

    def __call__(self, pipe, task, config) -> tuple[dict, bool]:
        if self.classifier is None:
            from .classifier import load_classifier

            self.classifier = load_classifier()
        images = sample_pairs(pipe, *grid(task.forget_prompts, self.seeds, self.noise), steps=config.data_steps,
                              guidance_scale=config.data_guidance, progress=False)
        hits = forget_hits(images, task, classifier=self.classifier)
        rate = sum(hits) / len(hits)
        return {"forget_check": rate}, rate <= self.bound


def until_forgotten(every: int, below: float | None = None, seeds=CHECK_SEEDS, noise: str = "shared") -> UntilForgotten:
    """The stopping rule 'train until forgotten', checked every `every` steps (`UntilForgotten`)."""
    return UntilForgotten(every, below, seeds, noise=noise)
