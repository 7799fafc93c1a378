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
