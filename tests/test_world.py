import pytest
import torch

import unlearnkit as uk
from unlearnkit import world


def test_vocabulary_sizes():
    assert len(world.OBJECTS) >= 6 and len(world.COLOURS) >= 5 and len(world.STYLES) >= 5


def test_render_is_deterministic_and_in_range():
    p = world.prompt("star", "blue", "wavy")
    a, b = world.render(p, seed=3), world.render(p, seed=3)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, world.render(p, seed=4))  # the seed moves, scales or rotates the object


def test_styles_change_the_whole_image():
    # the background (corners) differs between styles, not only the object
    corners = {s: world.render(world.prompt("circle", "red", s), 0)[:, :4, :4] for s in world.STYLES}
    for s in world.STYLES[1:]:
        assert (corners[s] - corners["plain"]).abs().mean() > 0.05
    # striped and wavy are neighbours: closer to each other than to the other styles
    img = {s: world.render(world.prompt("square", "blue", s), 1) for s in world.STYLES}
    d = {s: (img["striped"] - img[s]).abs().mean().item() for s in world.STYLES if s != "striped"}
    assert min(d, key=d.get) == "wavy"


def test_prompt_parse_round_trip():
    for p in world.all_prompts():
        assert world.prompt(**world.parse(p)) == p
    assert len(world.all_prompts()) == len(world.OBJECTS) * len(world.COLOURS) * len(world.STYLES)


@pytest.mark.parametrize("bad,word", [("a red hexagon, plain style", "hexagon"), ("a pink circle, plain style", "pink"),
                                      ("a red circle, cubist style", "cubist")])
def test_parse_names_the_unknown_word(bad, word):
    with pytest.raises(ValueError, match=word):
        world.parse(bad)


def test_parse_rejects_other_sentences():
    with pytest.raises(ValueError, match="not a world prompt"):
        world.parse("a photo of a cat")


def test_builtin_tasks():
    style, obj = uk.get_task("style"), uk.get_task("object")
    assert style.forget_concept == "wavy" and style.neighbour_concept == "striped"
    assert all("wavy" in p for p in style.forget_prompts)
    assert not any("wavy" in p for p in style.retain_prompts)
    assert all(a == f.replace("wavy", "plain") for f, a in zip(style.forget_prompts, style.anchor_prompts))
    # neighbour prompts come first
    n = len(style.neighbour_prompts)
    assert n == len(world.OBJECTS) * len(world.COLOURS)
    assert all("striped" in p for p in style.retain_prompts[:n])
    assert obj.forget_concept == "triangle" and all("triangle" in p for p in obj.forget_prompts)
    assert len(obj.forget_prompts) + len(obj.retain_prompts) == len(world.all_prompts())


def test_task_for_any_word_and_errors():
    t = world.task(forget="green", neighbour="yellow")
    assert t.kind == "colour" and t.anchor_prompts[0].split()[1] == "grey"
    with pytest.raises(ValueError, match="neutral"):
        world.task(forget="plain")
    with pytest.raises(ValueError, match="neighbour 'red'"):
        world.task(forget="circle", neighbour="red")
    with pytest.raises(ValueError, match="unknown concept 'dragon'"):
        world.task(forget="dragon")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        uk.get_task("nope")


def test_task_validation():
    with pytest.raises(ValueError, match="forget_prompts is empty"):
        uk.Task(name="t", forget_prompts=[], retain_prompts=["a"])
    with pytest.raises(ValueError, match="repeat forget prompts"):
        uk.Task(name="t", forget_prompts=["a cat"], retain_prompts=["a dog", "a cat"])
    with pytest.raises(ValueError, match="not aligned"):
        uk.Task(name="t", forget_prompts=["a cat", "two cats"], retain_prompts=["a dog"], anchor_prompts=["an animal"])


def test_retain_prompts_split_by_a_fixed_stratified_rule():
    from collections import Counter

    from unlearnkit.tasks import held_out_by_rule

    for name in ("object", "style"):
        t = uk.get_task(name)
        assert not set(t.retain_eval) & set(t.retain_train)
        assert set(t.retain_eval) | set(t.retain_train) == set(t.retain_prompts)
        total, held = Counter(t.retain_concepts), Counter(t.concept_of(p) for p in t.retain_eval)
        assert set(held) == set(total)  # every concept, the neighbour included, is in both parts
        for c in total:  # the 2nd, 5th, 8th, ... prompt of each concept: a third, rounded
            assert held[c] == (total[c] + 1) // 3, c
        assert t.retain_eval[0] in t.neighbour_prompts  # evaluation order keeps the neighbour first
        assert t.held_out == held_out_by_rule(t)
    # the rule on a task without concepts: one list; a lone prompt stays in training
    t = uk.Task(name="t", forget_prompts=["a cat"], retain_prompts=["a dog", "a frog", "a cow", "a pig", "an owl"])
    assert t.retain_eval == ["a frog", "an owl"] and t.retain_train == ["a dog", "a cow", "a pig"]
    one = uk.Task(name="t", forget_prompts=["a cat"], retain_prompts=["a dog"])
    assert one.held_out == [] and one.retain_eval == one.retain_train == ["a dog"]
    none = uk.Task(name="t", forget_prompts=["a cat"], retain_prompts=["a dog", "a frog"], held_out=[])
    assert none.retain_eval == none.retain_train == ["a dog", "a frog"]


def test_the_split_survives_cutting_and_a_method_sees_only_the_training_part():
    t = uk.get_task("object")
    small = t.head(3, 4)  # each part cut alike
    assert small.retain_train == t.retain_train[:4] and small.retain_eval == t.retain_eval[:4]
    view = t.training_view()
    assert view.retain_prompts == t.retain_train and view.held_out == [] and view.retain_eval == t.retain_train
    assert [view.concept_of(p) for p in view.retain_prompts] == [t.concept_of(p) for p in t.retain_train]
    kept = t.keep_retain(t.retain_prompts[::2])
    assert set(kept.held_out) == set(t.held_out) & set(t.retain_prompts[::2])
    with pytest.raises(ValueError, match="not a retain prompt.*keep_retain"):
        uk.Task(name="t", forget_prompts=["a cat"], retain_prompts=["a dog", "a frog"], held_out=["a cow"])
    with pytest.raises(ValueError, match="holds every retain prompt"):
        uk.Task(name="t", forget_prompts=["a cat"], retain_prompts=["a dog", "a frog"], held_out=["a dog", "a frog"])


def test_the_loop_hands_a_method_the_training_part_only(tiny_pipe, object_task):
    from dataclasses import dataclass

    from unlearnkit.methods import Method, UnlearnConfig, register_method
    from unlearnkit.methods.base import METHODS

    seen = {}

    @dataclass
    class PeekConfig(UnlearnConfig):
        steps: int = 0
        params: str = "xattn-kv"

    @register_method("peek-retain")
    class Peek(Method):
        config_class = PeekConfig

        def prepare(self, ctx):
            seen["prompts"], seen["task"] = list(ctx.retain_prompts), list(ctx.task.retain_prompts)

    try:
        uk.unlearn(tiny_pipe, object_task, "peek-retain", progress=False)
    finally:
        METHODS.pop("peek-retain", None)
    assert seen["prompts"] == seen["task"] == object_task.retain_train
    assert not set(seen["prompts"]) & set(object_task.retain_eval)
