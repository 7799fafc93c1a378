"""The embedded world: procedurally rendered objects x colours x styles.

Every image is a deterministic function of its prompt and seed, so the kit can train, unlearn and
evaluate a text-to-image model offline. A prompt reads ``"a red circle, striped style"``.

Styles change the whole picture (background and object) the way an art style does; ``striped``
and ``wavy`` are deliberate near neighbours (same palette and line density, straight vs curved
lines), like two painters of one school. Each kind has a neutral word (``NEUTRAL``) used for
anchor prompts: the concept to forget is replaced by it.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import Task

OBJECTS = ("circle", "square", "triangle", "cross", "star", "blob")
COLOURS = ("red", "yellow", "green", "blue", "grey")
STYLES = ("plain", "striped", "wavy", "dotted", "grainy")
KINDS = {"object": OBJECTS, "colour": COLOURS, "style": STYLES}
# the concept an anchor prompt puts in place of the forgotten one
NEUTRAL = {"object": "blob", "colour": "grey", "style": "plain"}
# the words every prompt uses besides the concepts (the tokenizer knows exactly these)
GRAMMAR_WORDS = ("a", ",", "style")
RESOLUTION = 32
TRAIN_SEEDS = 10_000_000  # base and classifier training renders use seeds below this; evaluation renders above

_RGB = {
    "red": (0.86, 0.16, 0.14),
    "yellow": (0.96, 0.82, 0.12),
    "green": (0.16, 0.66, 0.22),
    "blue": (0.14, 0.30, 0.90),
    "grey": (0.45, 0.45, 0.45),
}
_SUPERSAMPLE = 2  # render at 2x and average-pool: anti-aliased edges


def prompt(object: str, colour: str, style: str) -> str:
    """The world's prompt for one (object, colour, style) triple, e.g. 'a red circle, striped style'."""
    for kind, word in (("object", object), ("colour", colour), ("style", style)):
        if word not in KINDS[kind]:
            raise ValueError(f"unknown {kind} {word!r}; known {kind}s: {', '.join(KINDS[kind])}")
    return f"a {colour} {object}, {style} style"


def parse(text: str) -> dict[str, str]:
    """Inverse of `prompt`: {'object', 'colour', 'style'} of a world prompt; ValueError otherwise."""
    words = text.replace(",", " ").split()
    if len(words) != 5 or words[0] != "a" or words[4] != "style":
        raise ValueError(
            f"{text!r} is not a world prompt; expected the form 'a <colour> <object>, <style> style', "
            f"e.g. {prompt(OBJECTS[0], COLOURS[0], STYLES[1])!r}"
        )
    colour, object, style = words[1], words[2], words[3]
    prompt(object, colour, style)  # validates each word with a message listing the known ones
    return {"object": object, "colour": colour, "style": style}


def all_prompts() -> list[str]:
    """Every prompt of the world, object-major (objects x colours x styles)."""
    return [prompt(o, c, s) for o in OBJECTS for c in COLOURS for s in STYLES]


def kind_of(word: str) -> str:
    """'object', 'colour' or 'style' for a concept word of the world."""
    for kind, words in KINDS.items():
        if word in words:
            return kind
    known = ", ".join(w for words in KINDS.values() for w in words)
    raise ValueError(f"unknown concept {word!r}; the world's concepts are: {known}")


def _rng(text: str, seed: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, renders must not change between runs
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(text.encode())])


def _shape_sdf(object: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) of a unit-size shape at the origin."""
    if object == "circle":
        return torch.sqrt(x**2 + y**2) - 0.82
    if object == "square":
        return torch.maximum(x.abs(), y.abs()) - 0.70
    if object == "triangle":
        # equilateral, pointing up: the max over its three edge lines (exact inside, close outside)
        normals = [(-math.pi / 2), (math.pi / 6), (5 * math.pi / 6)]
        d = torch.stack([x * math.cos(t) + y * math.sin(t) for t in normals]).amax(0)
        return d - 0.52
    if object == "cross":
        return torch.minimum(
            torch.maximum(x.abs() - 0.9, y.abs() - 0.28), torch.maximum(x.abs() - 0.28, y.abs() - 0.9)
        )
    if object == "star":
        # five points, one pointing up: the radius runs linearly from inner to outer in angle
        r = torch.sqrt(x**2 + y**2)
        a = torch.atan2(y, x) - math.pi / 2
        f = (torch.remainder(a / (2 * math.pi / 5), 1.0) - 0.5).abs() * 2  # 1 at a point, 0 between
        return r - (0.40 + 0.55 * f)
    if object == "blob":
        # a soft, slightly elongated lump: the world's neutral, 'generic' object
        sx, sy = 0.95, 0.62
        return torch.sqrt((x / sx) ** 2 + (y / sy) ** 2) - 1.0
    raise ValueError(f"unknown object {object!r}; known objects: {', '.join(OBJECTS)}")


def _style_layers(style: str, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
    """(background RGB [3,H,W], multiplicative shading of the object [H,W]) for a style."""
    h, w = x.shape
    phase = float(rng.uniform(0, 2 * math.pi))
    if style == "plain":
        bg = torch.tensor([0.93, 0.93, 0.90]).view(3, 1, 1).expand(3, h, w).clone()
        return bg, torch.ones(h, w)
    if style in ("striped", "wavy"):
        u = (x + y) / math.sqrt(2)
        if style == "wavy":
            v = (x - y) / math.sqrt(2)
            u = u + 0.16 * torch.sin(v * 7.0 + phase * 0.5)
        band = 0.5 + 0.5 * torch.sin(u * 2 * math.pi / 0.34 + phase)
        light, dark = torch.tensor([0.90, 0.92, 0.96]), torch.tensor([0.50, 0.56, 0.70])
        bg = dark.view(3, 1, 1) + (light - dark).view(3, 1, 1) * band
        return bg, 0.62 + 0.38 * band
    if style == "dotted":
        period = 0.36
        gx = torch.remainder(x + phase * 0.05, period) - period / 2
        gy = torch.remainder(y + phase * 0.03, period) - period / 2
        dot = (torch.sqrt(gx**2 + gy**2) < 0.09).float()
        paper, ink = torch.tensor([0.95, 0.89, 0.74]), torch.tensor([0.62, 0.44, 0.30])
        bg = paper.view(3, 1, 1) + (ink - paper).view(3, 1, 1) * dot
        return bg, 1.0 - 0.45 * dot
    if style == "grainy":
        g = torch.from_numpy(rng.normal(0, 1, size=(h // 2, w // 2)).astype(np.float32))
        g = F.interpolate(g[None, None], size=(h, w), mode="nearest")[0, 0]
        base = torch.tensor([0.74, 0.64, 0.50]).view(3, 1, 1)
        bg = base + 0.13 * g
        return bg, 0.85 + 0.15 * g
    raise ValueError(f"unknown style {style!r}; known styles: {', '.join(STYLES)}")


def render(text: str, seed: int = 0, resolution: int = RESOLUTION) -> torch.Tensor:
    """Render a world prompt; returns a float32 tensor [3, H, W] in [0, 1], deterministic in (prompt, seed).

    Position, size and rotation of the object vary with the seed.
    """
    c = parse(text)
    rng = _rng(text, seed)
    size = resolution * _SUPERSAMPLE
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-lin, lin, indexing="ij")
    scale = float(rng.uniform(0.50, 0.66))
    cx, cy = rng.uniform(-0.16, 0.16, size=2)
    angle = float(rng.uniform(-math.pi / 6, math.pi / 6))
    ca, sa = math.cos(angle), math.sin(angle)
    # object coordinates: translate, rotate, scale
    ox, oy = x - float(cx), y - float(cy)
    ox, oy = (ca * ox + sa * oy) / scale, (-sa * ox + ca * oy) / scale
    sdf = _shape_sdf(c["object"], ox, oy) * scale
    pixel = 2.0 / size
    if c["object"] == "blob":
        inside = torch.sigmoid(-sdf / (6 * pixel))  # soft edge: the blob is vague on purpose
    else:
        inside = (0.5 - sdf / pixel).clamp(0, 1)
    bg, shade = _style_layers(c["style"], x, y, rng)
    fg = torch.tensor(_RGB[c["colour"]]).view(3, 1, 1) * shade
    img = bg * (1 - inside) + fg * inside
    img = F.avg_pool2d(img[None], _SUPERSAMPLE)[0]
    return img.clamp(0, 1).contiguous()


def render_batch(prompts: list[str], seeds: list[int], resolution: int = RESOLUTION) -> torch.Tensor:
    """`render` for aligned lists of prompts and seeds; returns [N, 3, H, W] in [0, 1]."""
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts ({len(prompts)}) and seeds ({len(seeds)}) must have the same length")
    return torch.stack([render(p, s, resolution) for p, s in zip(prompts, seeds)])


def task(forget: str, neighbour: str | None = None, name: str | None = None):
    """A `Task` that forgets one concept word of the world; `neighbour` is the retain concept to watch first.

    Forget prompts: every prompt with the concept. Anchors: the same prompts with the concept replaced by
    the neutral word of its kind (``NEUTRAL``). Retain prompts: every other prompt, those with the neighbour
    concept first.
    """
    kind = kind_of(forget)
    if forget == NEUTRAL[kind]:
        raise ValueError(
            f"cannot forget {forget!r}: it is the neutral {kind} that anchor prompts map to; "
            f"pick another {kind}: {', '.join(w for w in KINDS[kind] if w != forget)}"
        )
    if neighbour is not None:
        if kind_of(neighbour) != kind or neighbour == forget:
            raise ValueError(
                f"neighbour {neighbour!r} must be another {kind} than {forget!r}; "
                f"choose from: {', '.join(w for w in KINDS[kind] if w != forget)}"
            )
    forget_prompts, anchors, near, rest = [], [], [], []
    for p in all_prompts():
        c = parse(p)
        if c[kind] == forget:
            forget_prompts.append(p)
            anchors.append(prompt(**{**c, kind: NEUTRAL[kind]}))
        elif neighbour is not None and c[kind] == neighbour:
            near.append(p)
        else:
            rest.append(p)
    # a fixed shuffle, so that any prefix of the retain list (evaluate's max_retain) mixes every concept
    order = np.random.default_rng(zlib.crc32(forget.encode()))
    near = [near[i] for i in order.permutation(len(near))]
    rest = [rest[i] for i in order.permutation(len(rest))]
    retain = near + rest
    return Task(
        name=name or f"forget-{forget}",
        forget_prompts=forget_prompts,
        retain_prompts=retain,
        retain_concepts=[parse(p)[kind] for p in retain],
        anchor_prompts=anchors,
        forget_concept=forget,
        neighbour_concept=neighbour,
        kind=kind,
        relabel_concepts=[w for w in KINDS[kind] if w != forget],
    )
