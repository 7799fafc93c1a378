"""Profiles: the sizes of an experiment. `smoke` (seconds, for tests), `cpu` (the embedded reproduction on 2 CPU
cores, the default), `full` (the paper's budget on a CPU) and `gpu`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import get_task
from ..tasks import Task


@dataclass
class Profile:
    name: str
    method_overrides: dict = field(default_factory=dict)  # applied to every method's config
    # {method: overrides} for one method's own fields, where a profile's budget differs from its authors' recipe
    method_settings: dict = field(default_factory=dict)
    eval_seeds: tuple = (0, 1)  # seeds of the retention metric
    # seeds of the forget images (the forget rate's sample): more than the retention metric's, so the rate's interval
    # is narrow enough to decide forgot / not forgot; none of them is a training (DATA_SEED0 + ...) or check seed
    forget_seeds: tuple = (0, 1, 2, 3)
    # how the forget images get their noise (`sampling.NOISE`): 'shared' (one per seed) keeps every committed number;
    # 'per-image' makes them independent draws (docs/RESULTS.md, "Forget images with their own noise")
    forget_noise: str = "shared"
    max_retain: int | None = 40  # retain prompts evaluated (neighbour concept first)
    max_forget: int | None = None  # forget prompts kept in the task (None: all)
    sample_steps: int = 20  # DDIM steps when evaluating
    guidance_scale: float = 2.0  # measured best of 1.5, 2, 3, 5 on the shipped model (README)
    figure_seeds: tuple = (0, 1)  # one figure row per (concept, seed)
    # the recovery attack: optimiser steps on the word, its data (images per forget prompt, DDIM steps), judged images
    attack_settings: dict = field(default_factory=lambda: dict(steps=100, data_seeds=2, data_steps=10, seeds=(0,),
                                                               sample_steps=10))

    def trim(self, task: Task) -> Task:
        """`task` cut to this profile's sizes (unchanged when the profile keeps every forget prompt)."""
        if self.max_forget is None:
            return task
        return task.head(self.max_forget, max(self.max_retain or 4, 4))

    def task(self, name: str) -> Task:
        """The built-in task `name`, trimmed to this profile's sizes."""
        return self.trim(get_task(name))

    def concept_task(self, word: str) -> Task:
        """The embedded world's task that forgets `word`, trimmed like `task`: a built-in task when `word` is the
        one it forgets (so its tuned configs and cached runs apply), else `world.task(word)`."""
        from .. import world
        from ..catalog import BUILTIN

        name = next((n for n, spec in BUILTIN.items() if spec["forget"] == word), None)
        if name is not None:
            return self.task(name)
        return self.trim(world.task(word))

    def settings(self, method: str) -> dict:
        """The config fields this profile sets for `method`: its budget for every method and its own for this one
        (`uk.unlearn(pipe, task, method, **P.settings(method))`; `run_method` adds the task's tuned config on top)."""
        from ..methods import canonical

        return {**self.method_overrides, **self.method_settings.get(canonical(method), {})}

    @property
    def attack(self) -> dict:
        """`attacks.attack`'s settings under this profile."""
        return dict(self.attack_settings)

    @property
    def sampler(self) -> dict:
        return {"steps": self.sample_steps, "guidance_scale": self.guidance_scale}

    @property
    def evaluation(self) -> dict:
        """`evaluate`'s settings under this profile: seeds, forget seeds (and their noise, where not 'shared'),
        max_retain and the sampler."""
        out = {"seeds": list(self.eval_seeds), "forget_seeds": list(self.forget_seeds), "max_retain": self.max_retain,
               **self.sampler}
        if self.forget_noise != "shared":  # said only when it differs: the tuning rows' settings stay comparable
            out["forget_noise"] = self.forget_noise
        return out


# the authors' costly parts, sized per profile (docs/RESULTS.md, "Cost"): SA's Fisher sums 1000 timesteps per replay
# example (the authors average 5000 examples on SD; measured here: 165 s for one example of the embedded base, the 2
# cores shared with another job, 2026-12-01); ESD samples x_t by up to 49 guided DDIM steps of the trained model per step. The smoke profile only checks
# that the notebooks run: there SA takes the kit's one-t Fisher and ESD noises the data (`x_t="data"`), said here.
SMOKE_CHEAP = {"sa": dict(fisher="one-t"), "esd-x": dict(x_t="data"), "esd-u": dict(x_t="data")}

PROFILES = {
    "smoke": Profile("smoke", method_overrides=dict(steps=2, batch_size=2, data_steps=2, data_seeds=1),
                     method_settings=SMOKE_CHEAP,
                     eval_seeds=(0,), forget_seeds=(0,), max_retain=4, max_forget=2, sample_steps=2, figure_seeds=(0,),
                     attack_settings=dict(steps=2, batch_size=2, data_seeds=1, data_steps=2, seeds=(0,),
                                          sample_steps=2)),
    # 10 DDIM steps for data and evaluation: half the sampling time of 20, object accuracy 91% vs 95% (README);
    # 50 optimiser steps and one evaluation seed (40 retain + 25-30 forget images per method) kept the paper's
    # notebooks (13 unlearning runs) within 20 min on 2 cores; about 24 since notebook 00's yellow section
    # cpu: SA's Fisher from 4 replay examples, ESD's chain of 10 DDIM steps (with the authors' 50, one 50-step run of
    # ESD-x had not finished after 7 min on the 2 cores, shared with the test suite, 2026-12-01)
    "cpu": Profile("cpu", method_overrides=dict(data_steps=10, steps=50),
                   method_settings={"sa": dict(fisher_samples=4), "esd-x": dict(sample_steps=10),
                                    "esd-u": dict(sample_steps=10)}, eval_seeds=(0,), sample_steps=10),
    # the paper's budget on a CPU: 100 steps, two evaluation seeds, every held-out retain prompt, ESD's 50-step x_t
    # chain. `unlearnkit reproduce --profile full --only 10` writes figures/table1_full.* (2026-12-03, 2 cores: over
    # an hour for the object task's first seven runs, ESD-x and ESD + L_help 18-19 min each; docs/RESULTS.md),
    # resumable through the run cache; the other notebooks on it are not timed
    "full": Profile("full", method_overrides=dict(data_steps=10), method_settings={"sa": dict(fisher_samples=8)},
                    eval_seeds=(0, 1), max_retain=None, sample_steps=10),
    "gpu": Profile("gpu", eval_seeds=(0, 1, 2, 3), forget_seeds=tuple(range(8)), max_retain=None, figure_seeds=(0, 1, 2),
                   attack_settings=dict(steps=300, data_seeds=2, data_steps=20, seeds=(0, 1, 2, 3), sample_steps=20)),
}


def profile(name: str) -> Profile:
    """The named profile: 'smoke', 'cpu' (default reproduction), 'full' (the paper's budget, CPU) or 'gpu'."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]
