"""The pipeline parts the loop, the sampler and the metric share: prompts -> embeddings, images <-> the UNet's space.

The embedded model works in pixel space; Stable Diffusion in VAE latent space. Nothing else differs.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


# images per VAE call: at 512 px SD's VAE holds ~1 GiB of activations per image, so a group of 24 would need
# ~22 GiB at once (computed in docs/SD.md); in chunks of 4 the peak stays at a few GiB whatever the group size
VAE_BATCH = 4


def check_words(tokenizer, prompts: list[str]) -> None:
    """Raise a ValueError naming the first word the tokenizer does not know (and listing the known ones)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for p in prompts:
        enc = tokenizer(p, add_special_tokens=False)
        ids = enc["input_ids"]
        if unk in ids:
            words = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(p)
            bad = next(w for (w, _), i in zip(words, ids) if i == unk)
            known = sorted(w for w in tokenizer.get_vocab() if not w.startswith("["))
            raise ValueError(f"unknown word {bad!r} in prompt {p!r}; the model knows: {', '.join(known)}")


def is_latent(pipe) -> bool:
    """True for pipelines with a VAE (Stable Diffusion): the UNet then works in latent space."""
    return getattr(pipe, "vae", None) is not None


def pipeline_device(pipe) -> torch.device:
    return next(pipe.unet.parameters()).device


def with_unet(pipe, unet):
    """A pipeline of `pipe`'s class and parts with `unet` in place of its UNet (the other parts shared, not copied);
    its progress bar off."""
    swapped = type(pipe)(**{**pipe.components, "unet": unet})
    swapped.set_progress_bar_config(disable=True)
    return swapped


def tokenize(tokenizer, prompts: list[str], device=None) -> torch.Tensor:
    """Token ids [N, model_max_length] of `prompts`, padded to the tokenizer's length (as the text encoders take them)."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """`encoder_hidden_states` [N, tokens, dim] for a list of prompts ('' is the unconditional prompt)."""
    check_words(pipe.tokenizer, [p for p in prompts if p])
    return pipe.text_encoder(tokenize(pipe.tokenizer, prompts, pipeline_device(pipe)))[0]


def encode_images(pipe, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images [N,3,H,W] in [0,1] -> the UNet's input space (pixels in [-1,1], or scaled VAE latents)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] RGB in [0, 1], got shape {tuple(images.shape)}")
    if not is_latent(pipe):
        size = sample_shape(pipe)[1:]
        if tuple(images.shape[2:]) != size:
            raise ValueError(f"this model takes {size[0]}x{size[1]} images, got {images.shape[2]}x{images.shape[3]}; "
                             "resize them first")
    elif images.shape[2] % 8 or images.shape[3] % 8:
        raise ValueError(f"Stable Diffusion's VAE takes sides that are multiples of 8, got {tuple(images.shape[2:])}")
    x = images.to(pipeline_device(pipe)) * 2 - 1
    if not is_latent(pipe):
        return x
    x = x.to(pipe.vae.dtype)
    return torch.cat([pipe.vae.encode(c).latent_dist.sample(generator) for c in x.split(VAE_BATCH)]) \
        * pipe.vae.config.scaling_factor


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_images`: images [N,3,H,W] in [0,1], float32."""
    if is_latent(pipe):
        scaled = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        latents = torch.cat([pipe.vae.decode(c).sample for c in scaled.split(VAE_BATCH)])
    return ((latents.float() + 1) / 2).clamp(0, 1)


def sample_shape(pipe) -> tuple[int, int, int]:
    """(channels, height, width) of the UNet's input."""
    cfg = pipe.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    return (cfg.in_channels, size, size)


def training_scheduler(pipe) -> DDPMScheduler:
    """The DDPM scheduler with the pipeline's noise schedule, for adding noise during training."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (changes when any weight changes)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def auto_batch_size(pipe) -> int:
    """Images per sampling batch that fill the device: 64 on a CPU (the cores are busy from there on); on a GPU,
    1024 for the embedded model (32×32 pixels: hundreds of images cost less than the per-call overhead) and 16 for
    Stable Diffusion's latents."""
    if pipeline_device(pipe).type != "cuda":
        return 64
    return 16 if is_latent(pipe) else 1024
