"""Shared-seed sampling: the image of (prompt, seed) depends on nothing else.

The retention metric compares the base and the unlearned model on the same prompt and the same
initial noise, so each image's noise comes from its own generator seeded with its seed — never
from a batch-wide generator, whose draws would depend on batch size and order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler
# tqdm.auto: in Jupyter one ipywidgets bar per loop, updated in place (what a JupyterLab user watches; papermill
# stores its final state in the notebook), in a terminal the usual text bar
from tqdm.auto import tqdm

from .backbone import auto_batch_size, decode_latents, encode_prompts, pipeline_device, sample_shape

DEFAULT_STEPS = 20  # DDIM steps
DEFAULT_GUIDANCE = 2.0  # classifier-free guidance for the embedded model: measured best of 1.5, 2, 3, 5 (README)


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The initial noise z_s of one image: a function of its seed and shape alone (drawn on the CPU)."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)))


def _check(prompts, seeds, steps, guidance_scale):
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string; wrap it: [prompt]")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; give at least one prompt")
    if len(seeds) == 0:
        raise ValueError("seeds is empty; give at least one seed, e.g. seeds=[0, 1]")
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")


@torch.no_grad()
def sample_pairs(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = DEFAULT_STEPS,
                 guidance_scale: float = DEFAULT_GUIDANCE, batch_size: int | None = None, progress: bool | None = None
                 ) -> torch.Tensor:
    """Images for aligned (prompt, seed) pairs: [N,3,H,W] float32 in [0,1] on the CPU, in the given order.

    DDIM (eta=0, deterministic) with the pipeline's noise schedule and classifier-free guidance. `batch_size`
    (default: `auto_batch_size`, from the device) changes the speed only, never an image.
    """
    _check(prompts, seeds, steps, guidance_scale)
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts ({len(prompts)}) and seeds ({len(seeds)}) must be aligned")
    device = pipeline_device(pipe)
    dtype = pipe.unet.dtype
    shape = sample_shape(pipe)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    guided = guidance_scale != 1.0
    # encode each distinct prompt once
    unique = sorted(set(prompts))
    table = encode_prompts(pipe, unique + [""]).to(dtype)
    row = {p: i for i, p in enumerate(unique)}
    uncond = table[-1:]
    out = []
    batch_size = batch_size or auto_batch_size(pipe)
    batches = list(range(0, len(prompts), batch_size))
    # under `accelerate launch`, each process samples every n-th batch; the batches are the single-process
    # ones, so the gathered result is bit-identical to a one-process run
    state = _state()
    mine = batches[state.process_index::state.num_processes] if state else batches
    show = progress if progress is not None else len(mine) * steps > 200
    for start in tqdm(mine, disable=not show, desc="sample"):
        chunk = list(range(start, min(start + batch_size, len(prompts))))
        cond = table[[row[prompts[i]] for i in chunk]]
        latents = torch.stack([initial_noise(seeds[i], shape) for i in chunk]).to(device, dtype)
        latents = latents * scheduler.init_noise_sigma
        encoder_hidden_states = torch.cat([uncond.expand(len(chunk), -1, -1), cond]) if guided else cond
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states).sample
            if guided:
                noise_uncond, noise_cond = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        out.append(decode_latents(pipe, latents).cpu())
    if state:
        from accelerate.utils import gather_object

        parts = gather_object([(start, images) for start, images in zip(mine, out)])
        out = [images for _, images in sorted(parts, key=lambda item: item[0])]
    return torch.cat(out)


def _state():
    """accelerate's process state when several processes run (accelerate launch / torchrun), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    # cpu=True on a machine without a GPU: otherwise accelerate sees no distributed run under torchrun on CPUs
    return PartialState(cpu=not torch.cuda.is_available())


def sample(pipe, prompts: Sequence[str], seeds: Sequence[int] = (0,), steps: int = DEFAULT_STEPS,
           guidance_scale: float = DEFAULT_GUIDANCE, batch_size: int | None = None, progress: bool | None = None
           ) -> torch.Tensor:
    """One image per (prompt, seed), prompt-major: [len(prompts)*len(seeds), 3, H, W] float32 in [0,1] (CPU).

    Image k = (prompts[k // len(seeds)], seeds[k % len(seeds)]); its initial noise depends only on its seed.
    """
    _check(prompts, seeds, steps, guidance_scale)
    pairs = [(p, s) for p in prompts for s in seeds]
    return sample_pairs(pipe, [p for p, _ in pairs], [s for _, s in pairs], steps=steps,
                        guidance_scale=guidance_scale, batch_size=batch_size, progress=progress)


@torch.no_grad()
def partial_sample(unet, pipe, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """ESD's x_t: DDIM-sample from `noise` with `cond` until each image reaches its timestep.

    Returns (x_t, t): the partially denoised batch and the schedule timestep each image stopped at
    (the first one at or below the requested timestep).
    """
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    reached = torch.full_like(timesteps, int(scheduler.timesteps[0]))
    e = torch.cat([uncond.expand(len(x), -1, -1), cond])
    for t in scheduler.timesteps:
        active = timesteps < t  # images whose target timestep lies further down the chain
        if not active.any():
            break
        pred = unet(torch.cat([x, x]), t, e).sample
        pred_uncond, pred_cond = pred.chunk(2)
        pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        prev = scheduler.step(pred, t, x).prev_sample
        x = torch.where(active.view(-1, 1, 1, 1), prev, x)
        nxt = t - scheduler.config.num_train_timesteps // steps
        reached = torch.where(active, torch.clamp(torch.as_tensor(nxt), min=0).to(reached), reached)
    return x, reached
