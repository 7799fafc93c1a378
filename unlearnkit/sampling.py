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


# how the images of one seed get their noise: 'shared' — every prompt at seed s starts from `initial_noise(s)` (the
# retention metric's pairs, and the forget images unless asked); 'per-image' — each (prompt, seed) its own noise
# (`image_seed`), so the images of a forget-rate sample are independent draws and a Wilson interval over images is
# honest. With shared noise the images of one seed rise and fall together (OVW on *red*: 0 to 12 of 30 per seed,
# docs/RESULTS.md, "Why the stopping check and the evaluation disagree"), so the sample is one of seeds, not images.
NOISE = ("shared", "per-image")
_IMAGE_SEED0 = 2**32  # above every seed the kit passes as an int (training data, checks, evaluation)


def image_seed(prompt: str, seed: int) -> int:
    """The noise seed of (prompt, seed) under `noise='per-image'`: 2**32 plus the first 32 bits of SHA-256 of the
    seed and the prompt. The same pair always gets the same noise (the base's image and the edited model's are still
    a pair); two prompts at one seed get different noise; and it never equals a seed below 2**32."""
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}\0{prompt}".encode()).digest()
    return _IMAGE_SEED0 + int.from_bytes(digest[:4], "big")


def noise_seeds(prompts: Sequence[str], seeds: Sequence[int], noise: str = "shared") -> list[int]:
    """The noise seed of each (prompts[i], seeds[i]) pair: `seeds` itself under 'shared', `image_seed` under
    'per-image' (`NOISE`)."""
    if noise not in NOISE:
        raise ValueError(f"noise={noise!r}: choose 'shared' (every prompt at a seed starts from that seed's noise) or "
                         "'per-image' (each prompt and seed its own noise)")
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
    return [int(s) for s in seeds] if noise == "shared" else [image_seed(p, s) for p, s in zip(prompts, seeds)]


def grid(prompts: Sequence[str], seeds: Sequence[int], noise: str = "shared") -> tuple[list[str], list[int]]:
    """Every prompt at every seed, prompt by prompt (the order `sample` and `evaluate` use), as aligned lists for
    `sample_pairs`: the prompts, and each pair's noise seed under `noise` (`noise_seeds`)."""
    prompts_ = [p for p in prompts for _ in seeds]
    return prompts_, noise_seeds(prompts_, [int(s) for s in seeds] * len(prompts), noise)


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
    return sample_pairs(pipe, *grid(prompts, seeds), steps=steps, guidance_scale=guidance_scale,
                        batch_size=batch_size, progress=progress)


def esd_stop_index(t: torch.Tensor, ddim_steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """ESD's DDIM stop index t_enc for each UNet timestep t: the k with round(k/S·T) <= t < round((k+1)/S·T). The
    authors draw t_enc ~ U{0..S−1}, then t uniform in that bin (rohitgandikota/erasing, train-scripts/train-esd.py
    lines 226-231, commit b8aeab6d); for S dividing T (50 and 1000) a uniform t and this t_enc have the same law."""
    edges = torch.tensor([round(k / ddim_steps * num_train_timesteps) for k in range(1, ddim_steps)], device=t.device)
    return torch.bucketize(t, edges, right=True)


@torch.no_grad()
def esd_partial_ddim(unet, alphas_cumprod: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                     start_code: torch.Tensor, t_enc: torch.Tensor, ddim_steps: int = 50, guidance_scale: float = 3.0,
                     prediction_type: str = "epsilon") -> torch.Tensor:
    """ESD's x_t as its authors draw it: DDIM (eta 0) from `start_code` with `unet` (the model being trained),
    classifier-free guidance `guidance_scale` under `cond`, each row stopped by its `t_enc`.

    The CompVis chain of rohitgandikota/erasing (train-scripts/train-esd.py lines 205-207, 237 and
    ldm/models/diffusion/ddim.py lines 135-196, commit b8aeab6d4b6b613b88ad0bf219e3697c79003838), quirks kept:
    the DDIM timesteps are range(0, T, T//S) + 1 without the last one, so the chain starts at 961 (S = 50) and
    stops after the step whose index + 1 equals t_enc (it runs 50 − t_enc steps; 49 for t_enc = 0). A
    v-prediction UNet's guided output is turned into ε = √ᾱ_t v + √(1−ᾱ_t) x (exact) before the unchanged update.
    Returns x_t [N, C, H, W]; rows are independent (each its own t_enc).
    """
    T = alphas_cumprod.shape[0]
    ac = alphas_cumprod.float().to(start_code.device)
    ddim_ts = torch.arange(0, T, T // ddim_steps) + 1
    alphas, alphas_prev = ac[ddim_ts], torch.cat([ac[:1], ac[ddim_ts[:-1]]])
    timesteps = ddim_ts[:-1]
    x, n = start_code, len(start_code)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    till = t_enc.to(x.device)
    e = torch.cat([uncond.expand(n, -1, -1), cond])
    for i, step in enumerate(torch.flip(timesteps, [0]).tolist()):
        index = len(timesteps) - i - 1
        ts = torch.full((2 * n,), step, device=x.device, dtype=torch.long)
        e_uncond, e_cond = unet(torch.cat([x, x]), ts, e).sample.float().chunk(2)
        e_t = e_uncond + guidance_scale * (e_cond - e_uncond)
        a_t, a_prev = alphas[index], alphas_prev[index]
        if prediction_type == "v_prediction":
            e_t = a_t.sqrt() * e_t + (1 - a_t).sqrt() * x
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        x = torch.where(active.view(-1, 1, 1, 1), a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_t, x)
        active = active & (till != index + 1)  # ddim.py lines 194-195: stop after this step
        if not active.any():
            break
    return x
