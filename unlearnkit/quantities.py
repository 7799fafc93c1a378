"""What a method works with, made visible (the method notebooks 03–07): where the weights moved, which weights
SalUn freed, where SA's Fisher sits, and ESD's negatively guided target as images.

Every function reads a result or a model and returns plain numbers or images; `figures.py` draws them.
"""

from __future__ import annotations

import torch

from .backbone import encode_prompts, pipeline_device, training_scheduler
from .data import cached_sample_pairs
from .losses import esd_target


def block_of(name: str) -> str:
    """The UNet block a parameter belongs to: 'down_blocks.1', 'mid_block', 'up_blocks.0', 'conv_in', ..."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]


def _by_block(pairs) -> dict[str, list]:
    out = {}
    for name, value in pairs:
        out.setdefault(block_of(name), []).append(value)
    return out


@torch.no_grad()
def weight_change(base_unet, unet) -> dict[str, float]:
    """‖θ − θ0‖ / ‖θ0‖ per UNet block (the relative distance the unlearning moved each block)."""
    before = dict(base_unet.named_parameters())
    num, den = {}, {}
    for name, p in unet.named_parameters():
        b, p0 = block_of(name), before[name].to(p.device)
        num[b] = num.get(b, 0.0) + float(((p - p0).float() ** 2).sum())
        den[b] = den.get(b, 0.0) + float((p0.float() ** 2).sum())
    return {b: (num[b] / den[b]) ** 0.5 if den[b] else 0.0 for b in num}


def mask_share(mask: dict[str, torch.Tensor]) -> dict[str, float]:
    """SalUn: the share of each block's weights its saliency mask lets move."""
    return {b: sum(int(m.sum()) for m in ms) / sum(m.numel() for m in ms)
            for b, ms in _by_block(mask.items()).items()}


def fisher_mass(fisher: list[torch.Tensor], names: list[str]) -> dict[str, float]:
    """SA: the share of the diagonal Fisher's total mass in each block (where the EWC penalty holds hardest)."""
    per = {b: sum(float(f.sum()) for f in fs) for b, fs in _by_block(zip(names, fisher)).items()}
    total = sum(per.values()) or 1.0
    return {b: v / total for b, v in per.items()}


@torch.no_grad()
def esd_panel(base, unlearned, prompt: str, seed: int = 0, timesteps=(250, 500, 750), etas=(0.5, 1.0, 2.0),
              steps: int = 20, guidance_scale: float = 2.0, cache_dir=None) -> tuple[dict, list[str]]:
    """ESD's quantities as predicted clean images x̂0, for the base model's image of `prompt` noised to each t.

    Returns ({row label: images [len(timesteps),3,H,W] in [0,1]}, column labels): x_t, the base's conditional and
    unconditional predictions, the negatively guided target ε_θ0(∅) − η(ε_θ0(c_f) − ε_θ0(∅)) for each η, and the
    unlearned model's prediction. x̂0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ (ε models) or √ᾱ x_t − √(1−ᾱ) v̂ (v models).
    """
    from .backbone import decode_latents, encode_images

    device = pipeline_device(base)
    x0 = encode_images(base, cached_sample_pairs(base, [prompt], [seed], steps, guidance_scale, cache_dir))
    sched = training_scheduler(base)
    t = torch.tensor(list(timesteps), device=device)
    a = sched.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    noise = torch.randn((len(t), *x0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(device)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    cond, null = encode_prompts(base, [prompt] * len(t)), encode_prompts(base, [""] * len(t))

    def x0_hat(pred):
        if sched.config.prediction_type == "v_prediction":
            return decode_latents(base, a.sqrt() * x_t - (1 - a).sqrt() * pred)
        return decode_latents(base, (x_t - (1 - a).sqrt() * pred) / a.sqrt())

    b_cond, b_null = base.unet(x_t, t, cond).sample, base.unet(x_t, t, null).sample
    rows = {"x_t": decode_latents(base, x_t), "base, c_f": x0_hat(b_cond), "base, ∅": x0_hat(b_null)}
    for eta in etas:
        rows[f"ESD target η={eta:g}"] = x0_hat(esd_target(b_null, b_cond, eta))
    rows["unlearned, c_f"] = x0_hat(unlearned.unet(x_t, t, encode_prompts(unlearned, [prompt] * len(t))).sample)
    return rows, [f"t={int(v)}" for v in timesteps]
