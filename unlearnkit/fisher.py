"""The diagonal Fisher of L_simple for Selective Amnesia's EWC penalty, computed once and cached."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from . import losses
from .io import atomic_save


def diagonal_fisher(unet, trainable, latents, embeds, add_noise, num_timesteps, cfg, fingerprint, cache_dir=None,
                    target=None):
    """F_i = mean over `cfg.fisher_samples` replay examples of (∂L_simple/∂θ_i)², one example per backward pass.

    Heng & Soh 2023, eq. 5 (empirical Fisher of the diffusion loss). Returns a list aligned with `trainable`,
    every entry >= 0. `target(x0, noise, t)` is the regression target (default: the noise, for an epsilon model).
    Cached under the base fingerprint, the parameter set, the sample count and the seed.
    """
    from .data import default_cache_dir

    key = hashlib.sha1(json.dumps([fingerprint, cfg.params, cfg.fisher_samples, cfg.seed, len(latents),
                                   cfg.retain_seeds, cfg.data_steps, cfg.data_guidance]).encode()).hexdigest()[:20]
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "fisher" / f"{key}.pt"
    if cache_dir is not False and path.exists():
        return [f.to(p.device) for f, (_, p) in zip(torch.load(path, weights_only=True), trainable)]
    params = [p for _, p in trainable]
    fisher = [torch.zeros_like(p) for p in params]
    gen = torch.Generator("cpu").manual_seed(cfg.seed + 20_000)
    device = params[0].device
    for _ in range(cfg.fisher_samples):
        i = torch.randint(0, len(latents), (1,), generator=gen)
        noise = torch.randn((1, *latents.shape[1:]), generator=gen).to(device)
        t = torch.randint(0, num_timesteps, (1,), generator=gen).to(device)
        pred = unet(add_noise(latents[i], noise, t), t, embeds[i]).sample
        y = target(latents[i], noise, t) if target is not None else noise
        grads = torch.autograd.grad(losses.simple_loss(pred, y), params)
        for f, g in zip(fisher, grads):
            f += g.detach() ** 2 / cfg.fisher_samples
    if cache_dir is not False:
        atomic_save([f.cpu() for f in fisher], path)
    return fisher
