"""Base-model images, generated once and cached on disk.

A base image depends only on the base weights, the prompt, the seed and the sampler settings, so
the cache key is exactly those (a fingerprint of the weights). The same cache serves the methods'
training data (forget / retain / anchor images) and the retention metric's reference images.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .io import atomic_save, cache_key
from .backbone import is_latent, weights_fingerprint
from .sampling import sample_pairs

DATA_SEED0 = 100_000  # training-data seeds start here; evaluation seeds are small integers (0, 1, …)


def default_cache_dir() -> Path:
    """$UNLEARNKIT_CACHE, else ~/.cache/unlearnkit."""
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit"))


def pipeline_fingerprint(pipe) -> str:
    """Fingerprint of every weight that shapes a generated image (UNet, text encoder, VAE) and the schedule."""
    # diffusers' private config keys ("_use_default_values" lists names in set order, which differs per process)
    schedule = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    parts = [weights_fingerprint(pipe.unet), weights_fingerprint(pipe.text_encoder),
             json.dumps(schedule, sort_keys=True, default=str)]
    if is_latent(pipe):
        parts.append(weights_fingerprint(pipe.vae))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def sample_key(fingerprint: str, prompts, seeds, steps: int, guidance_scale: float) -> str:
    return cache_key([fingerprint, list(prompts), [int(s) for s in seeds], int(steps), float(guidance_scale)])


def cached_sample_pairs(pipe, prompts, seeds, steps: int, guidance_scale: float, cache_dir=None,
                        fingerprint: str | None = None, progress: bool | None = None, batch_size: int | None = None
                        ) -> torch.Tensor:
    """`sample_pairs` through the disk cache: [N,3,H,W] float32 in [0,1], bit-identical to a fresh sample.

    `cache_dir=False` turns the cache off. `fingerprint` skips re-hashing the weights when the caller has it.
    """
    if cache_dir is False:
        return sample_pairs(pipe, prompts, seeds, steps=steps, guidance_scale=guidance_scale, progress=progress,
                            batch_size=batch_size)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = sample_key(fingerprint or pipeline_fingerprint(pipe), prompts, seeds, steps, guidance_scale)
    path = cache_dir / "samples" / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            path.unlink()  # a broken cache entry is regenerated, never trusted
    images = sample_pairs(pipe, prompts, seeds, steps=steps, guidance_scale=guidance_scale, progress=progress,
                          batch_size=batch_size)
    atomic_save(images, path)
    return images


def training_data(pipe, task, cfg, cache_dir=None, fingerprint: str | None = None, progress=None) -> dict:
    """The base model's images for a task: {'forget', 'anchor', 'retain'} -> (prompts, images [N,3,H,W] in [0,1]).

    Forget and anchor images use the same seeds (`cfg.data_seeds` per prompt), so x_a[i] is x_f[i] with the
    concept swapped; retain images use `cfg.retain_seeds` per prompt. Seeds start at DATA_SEED0, away from
    the evaluation seeds.
    """
    fp = fingerprint or pipeline_fingerprint(pipe)
    out = {}
    groups = {"forget": (task.forget_prompts, cfg.data_seeds), "retain": (task.retain_prompts, cfg.retain_seeds)}
    if task.anchor_prompts:
        groups["anchor"] = (task.anchor_prompts, cfg.data_seeds)
    for name, (prompts, k) in groups.items():
        pairs = [(p, DATA_SEED0 + i * 1000 + j) for i, p in enumerate(prompts) for j in range(k)]
        ps, ss = [p for p, _ in pairs], [s for _, s in pairs]
        out[name] = (ps, cached_sample_pairs(pipe, ps, ss, cfg.data_steps, cfg.data_guidance, cache_dir, fp, progress))
    return out
