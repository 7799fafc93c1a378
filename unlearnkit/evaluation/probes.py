"""Probes that calibrate the retention metric (notebook 02): damage of a known size, and the LPIPS ladder.

`weight_noise` damages a model on purpose, so LPIPS_ret, accuracy and FID can be read against a dial;
`lpips_ladder` gives LPIPS values a scale: the same image against a 1-pixel shift, another seed,
another colour and another object.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .. import world
from ..backbone import with_unet
from ..data import cached_sample_pairs
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS


@torch.no_grad()
def weight_noise(pipe, scale: float, seed: int = 0):
    """A copy of `pipe` whose UNet weights each get Gaussian noise of std `scale` × that tensor's own std.

    The base pipeline is untouched; the copy shares every other component (text encoder, scheduler, VAE).
    """
    if scale < 0:
        raise ValueError(f"scale is a standard deviation and must be >= 0, got {scale}")
    unet = copy.deepcopy(pipe.unet)
    g = torch.Generator().manual_seed(seed)
    for p in unet.parameters():
        # drawn on the CPU from one generator: the same noise on every device
        noise = torch.randn(p.shape, generator=g) * scale * p.detach().float().std().nan_to_num(0).cpu()
        p.add_(noise.to(p.device, p.dtype))
    return with_unet(pipe, unet)


def shift(images: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Images [N,3,H,W] moved right by `pixels`, the left edge column repeated into the gap."""
    if pixels < 0 or pixels >= images.shape[-1]:
        raise ValueError(f"pixels must be in [0, {images.shape[-1]}), got {pixels}")
    return F.pad(images, (pixels, 0, 0, 0), mode="replicate")[..., :images.shape[-1]]


def lpips_ladder(pipe, prompt: str, lpips, seed: int = 0, other_seed: int = 1, colour: str = "blue",
                 object: str = "star", steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                 cache_dir=None) -> dict[str, dict]:
    """LPIPS of one generated image (`prompt`, `seed`) to: itself, itself shifted by 1 pixel, the same prompt at
    `other_seed`, the prompt with `colour`, the prompt with `object` (both at `seed`).

    Returns {rung: {"image": [3,H,W], "prompt", "seed", "lpips"}} in that order; `lpips` an LPIPSDistance.
    """
    words = world.parse(prompt)
    if colour == words["colour"] or object == words["object"]:
        raise ValueError(f"colour {colour!r} and object {object!r} must differ from the prompt's {prompt!r}")
    rungs = {"itself": (prompt, seed), "1-pixel shift": (prompt, seed), "another seed": (prompt, other_seed),
             "another colour": (world.prompt(**{**words, "colour": colour}), seed),
             "another object": (world.prompt(**{**words, "object": object}), seed)}
    images = cached_sample_pairs(pipe, [p for p, _ in rungs.values()], [s for _, s in rungs.values()], steps,
                                 guidance_scale, cache_dir).clone()
    images[1] = shift(images[1:2], 1)[0]
    reference = images[:1].expand(len(images), -1, -1, -1)
    values = lpips(reference, images).tolist()
    return {name: {"image": x, "prompt": p, "seed": s, "lpips": v}
            for (name, (p, s)), x, v in zip(rungs.items(), images, values)}


def smallest_detected(results: dict, key: str, reference=0.0):
    """The smallest damage scale at which metric `key` sees the damage: its 95% interval (`key + '_ci'`) no longer
    overlaps the undamaged model's (`results[reference]`); None when it sees none. `results`: {scale: evaluate dict}."""
    lo0, hi0 = results[reference][key + "_ci"]
    return next((s for s, r in sorted(results.items()) if s != reference
                 and (r[key + "_ci"][0] > hi0 or r[key + "_ci"][1] < lo0)), None)
