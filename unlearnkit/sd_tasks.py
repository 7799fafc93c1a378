"""Built-in Stable Diffusion tasks, from the prompt templates in `prompts/sd_tasks.json`."""

from __future__ import annotations

import json
from pathlib import Path

from .tasks import Task

PROMPTS = Path(__file__).parent / "prompts" / "sd_tasks.json"
SD_TASKS = tuple(json.loads(PROMPTS.read_text()))


def sd_task(name: str) -> Task:
    """'sd-vangogh' (forget Van Gogh, watch Vermeer first) or 'sd-cat' (forget cat, watch frog first)."""
    spec = json.loads(PROMPTS.read_text()).get(name)
    if spec is None:
        raise ValueError(f"unknown Stable Diffusion task {name!r}; known: {', '.join(SD_TASKS)}")

    def fill(templates, concept):
        return [t.format(subject=s, concept=concept) for t in templates for s in spec["subjects"]]

    forget = fill(spec["templates"], spec["forget"])
    anchors = [t.format(subject=s) for t in spec["anchor_templates"] for s in spec["subjects"]]
    retain, concepts = [], []
    for concept in spec["retain"]:
        prompts = fill(spec["templates"], concept)
        retain += prompts
        concepts += [concept] * len(prompts)
    return Task(name=name, forget_prompts=forget, retain_prompts=retain, anchor_prompts=anchors,
                forget_concept=spec["forget"], neighbour_concept=spec["neighbour"], kind=spec["kind"],
                retain_concepts=concepts)
