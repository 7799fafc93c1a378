"""Prompt files, and the `Task` that measures two models on them (`unlearnkit report`, docs/REPORT.md).

A plain file has one prompt a line. A template file (UnlearnCanvas' form) has one or more lines
`template: An {object} image in {style} style` and, for each slot, a line `object: a, b, c` (comma-separated words);
it stands for every combination, the first list outermost. In both, blank lines and `#` comments are skipped, and
a repeated prompt counts once. The kit ships the embedded world's lists (`embedded`) and two Stable Diffusion lists
(`sd-painters`, a template from sd_tasks.json's sd-vangogh; `sd-objects`, a plain list from its sd-cat): a name of
a shipped list works wherever a path does.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import world
from .tasks import Task

SHIPPED = Path(__file__).parent / "prompts"  # the shipped lists: <name>.txt
TEMPLATE = "template"  # the key of a template line
SLOT = re.compile(r"\{(\w+)\}")
# the forget prompt of a task that forgets nothing: the unconditional prompt, sampled and then ignored (a Task needs one)
NO_FORGET = ""


@dataclass
class PromptList:
    """The prompts of a file, in order; `slots[prompt]` is {slot: word} for a template file's prompts (and for the
    embedded world's, by `world.parse`), empty for a plain list."""

    prompts: list[str]
    source: str  # the path as given, or the shipped list's name
    slots: dict[str, dict[str, str]] = field(default_factory=dict)


def shipped_lists() -> list[str]:
    """The names of the prompt lists the kit ships (`read_prompts(name)` reads one)."""
    return sorted(p.stem for p in SHIPPED.glob("*.txt"))


def read_prompts(path_or_name) -> PromptList:
    """The prompts of a file (plain or template) or of a shipped list by name; a ValueError names a missing or
    empty file, a malformed line (with its number) or a slot no list defines."""
    path = Path(path_or_name)
    if not path.exists() and (SHIPPED / f"{path_or_name}.txt").exists():
        path = SHIPPED / f"{path_or_name}.txt"
    if not path.is_file():
        raise ValueError(f"prompt file {str(path_or_name)!r} does not exist (from {Path.cwd()}); pass a text file "
                         f"with one prompt a line, a template file, or a shipped list: {', '.join(shipped_lists())}")
    return parse_prompts(path.read_text(encoding="utf-8"), str(path_or_name))


def parse_prompts(text: str, source: str = "<text>") -> PromptList:
    """`read_prompts` on a file's text: a template file when any line is `template: ...`, else a plain list."""
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"prompt file {source!r} holds no prompt (only blank lines or # comments); write one prompt "
                         "a line, or a 'template: ...' line with its word lists")
    if not any(_key(line) == TEMPLATE for _, line in lines):
        prompts = list(dict.fromkeys(line for _, line in lines))
        return PromptList(prompts, source, _world_slots(prompts))
    templates, lists = [], {}
    for i, line in lines:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == TEMPLATE:
            templates.append(value)
            continue
        if not _key(line):
            raise ValueError(f"{source}, line {i}: {line!r} is neither 'template: ...' nor a word list 'slot: a, b, c'; "
                             "a template file holds only those (a plain prompt file has no 'template:' line)")
        words = [w.strip() for w in value.split(",") if w.strip()]
        if not words:
            raise ValueError(f"{source}, line {i}: the list {key!r} is empty; give comma-separated words")
        if key in lists:
            raise ValueError(f"{source}, line {i}: the list {key!r} is defined twice; merge them into one line")
        lists[key] = list(dict.fromkeys(words))
    prompts, slots = expand(templates, lists, source)
    return PromptList(prompts, source, slots)


def _key(line: str) -> str | None:
    # the key of a `key: value` line (a word), else None
    m = re.match(r"(\w+)\s*:", line)
    return m.group(1) if m else None


def expand(templates: list[str], lists: dict[str, list[str]], source: str = "<text>"):
    """(prompts, {prompt: {slot: word}}): each template filled with every combination of its slots' words, the lists
    in the order they were defined, the first outermost."""
    used = set()
    prompts, slots = [], {}
    for template in templates:
        names = list(dict.fromkeys(SLOT.findall(template)))
        missing = [n for n in names if n not in lists]
        if missing:
            raise ValueError(f"{source}: the template {template!r} uses {{{missing[0]}}}, which no list defines; add "
                             f"a line '{missing[0]}: word, word, ...' (defined: {', '.join(lists) or 'none'})")
        used |= set(names)
        order = [n for n in lists if n in names]
        for words in itertools.product(*(lists[n] for n in order)):
            fill = dict(zip(order, words))
            prompt = SLOT.sub(lambda m: fill[m.group(1)], template)
            if prompt not in slots:
                prompts.append(prompt)
                slots[prompt] = fill
    unused = [n for n in lists if n not in used]
    if unused:
        raise ValueError(f"{source}: the list {unused[0]!r} is used by no template; use it as {{{unused[0]}}} or "
                         "remove it (a misspelt slot?)")
    return prompts, slots


def _world_slots(prompts):
    # the embedded world's prompts carry their slots in their form ('a <colour> <object>, <style> style')
    try:
        return {p: world.parse(p) for p in prompts}
    except ValueError:
        return {}


def has_word(word: str, prompt: str) -> bool:
    """Whether `prompt` contains `word` (or phrase) as a whole word, ignoring case."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE) is not None


def prompt_task(plist: PromptList, forget: str | None = None, neighbour: str | None = None,
                name: str = "report") -> Task:
    """The task that measures two models on `plist`: forget prompts are those containing `forget` (whole word),
    retain prompts the rest, those containing `neighbour` first.

    Each retain prompt's concept is `neighbour` where it contains it, else its word in the template slot that holds
    `forget` (so per-concept LPIPS splits by painter, object, ...), else 'other'. On all of the embedded world's prompts
    it is the built-in `world.task(forget, neighbour)`, held-out split and all; on some of them, that task cut to them
    and measured whole (no split). Without `forget` the task has one placeholder forget prompt (`NO_FORGET`) and no judge: retention only, every prompt."""
    prompts = plist.prompts
    if not prompts:
        raise ValueError(f"prompt file {plist.source!r} holds no prompt")
    if forget is None:
        if neighbour is not None:
            raise ValueError(f"--neighbour {neighbour!r} needs --forget: the neighbour is the retain concept nearest "
                             "to the one forgotten")
        return Task(name=name, forget_prompts=[NO_FORGET], retain_prompts=prompts, held_out=[])
    forget_prompts = [p for p in prompts if has_word(forget, p)]
    if not forget_prompts:
        raise ValueError(f"--forget {forget!r}: no prompt of {plist.source!r} contains it as a whole word (its first: "
                         f"{prompts[0]!r}); pick a word of the prompts or another prompt file")
    retain = [p for p in prompts if p not in set(forget_prompts)]
    if not retain:
        raise ValueError(f"--forget {forget!r}: every prompt of {plist.source!r} contains it, so none is left to "
                         "measure retention on; add prompts without it")
    if neighbour is not None:
        if neighbour.lower() == forget.lower():
            raise ValueError(f"--neighbour {neighbour!r} is the forgotten word; name another concept of the prompts")
        if not any(has_word(neighbour, p) for p in retain):
            raise ValueError(f"--neighbour {neighbour!r}: no retain prompt of {plist.source!r} contains it as a whole "
                             "word; pick a concept the prompts name")
    builtin = _world_task(plist, forget, neighbour, name)
    if builtin is not None:
        return builtin
    near = [p for p in retain if neighbour is not None and has_word(neighbour, p)]
    retain = near + [p for p in retain if p not in set(near)]
    slot = next((s for s, w in plist.slots.get(forget_prompts[0], {}).items() if has_word(forget, w)), None)

    def concept(p):
        if p in near:
            return neighbour
        return plist.slots[p][slot] if slot and p in plist.slots else "other"

    kind = world.kind_of(forget) if _is_world(plist, forget) else None  # the concept classifier judges these
    return Task(name=name, forget_prompts=forget_prompts, retain_prompts=retain, forget_concept=forget,
                neighbour_concept=neighbour, kind=kind, retain_concepts=[concept(p) for p in retain], held_out=[])


def _is_world(plist, forget) -> bool:
    # the list is the embedded world's prompts (all or some) and `forget` is one of its concept words
    return any(forget in words for words in world.KINDS.values()) and bool(_world_slots(plist.prompts))


def _world_task(plist, forget, neighbour, name):
    # the built-in task on the world's prompts, cut to the list's; None where it does not apply (another list, the
    # neutral word, a neighbour of another kind: then the general task, judged by the classifier all the same)
    if not _is_world(plist, forget):
        return None
    try:
        task = world.task(forget, neighbour)
    except ValueError:
        return None
    keep = set(plist.prompts)
    if keep == set(world.all_prompts()):
        return replace(task, name=name) if name != "report" else task
    # a list of one's own is measured whole: the cut task holds out nothing
    forget_idx = [i for i, p in enumerate(task.forget_prompts) if p in keep]
    return replace(task, name=name if name != "report" else task.name, held_out=[],
                   forget_prompts=[task.forget_prompts[i] for i in forget_idx],
                   anchor_prompts=[task.anchor_prompts[i] for i in forget_idx]).keep_retain(keep)
