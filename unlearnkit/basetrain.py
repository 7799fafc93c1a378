"""Train the embedded base model from scratch on renders of the world (`unlearnkit train-base`).

Infinite data: every batch is freshly rendered from random (prompt, seed) pairs, seeds below
`TRAIN_SEEDS`; evaluations use seeds above it. Resumable: a checkpoint (weights, EMA, optimiser,
RNG state, config) is written atomically every `checkpoint_every` steps and picked up on restart.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world
from .world import TRAIN_SEEDS
from .io import atomic_save, load_checkpoint
from .backbone import encode_images, tokenize, training_scheduler
from .losses import regression_target
from .models import build_pipeline, resolve_device



@dataclass
class BaseTrainConfig:
    size: str = "base"  # architecture from models.UNET_CONFIGS
    steps: int = 3000  # optimiser steps
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # peak AdamW learning rate (linear warmup, cosine decay to 10%)
    warmup: int = 200  # warmup steps
    weight_decay: float = 0.01
    ema_decay: float = 0.999  # EMA of the weights; the EMA is what gets shipped
    cond_dropout: float = 0.1  # share of prompts replaced by '' (classifier-free guidance)
    snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023); 0 turns it off
    seed: int = 0
    checkpoint_every: int = 250  # steps between checkpoints
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    prediction_type: str = "v_prediction"  # what the UNet predicts: 'v_prediction' or 'epsilon'
    init_from: str = ""  # warm start: a saved pipeline whose weights initialise this one ('' = from scratch)

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _lr_at(step: int, cfg: BaseTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def train_base(out_dir: str | Path, device: str = "auto", progress: bool = True, **overrides) -> dict:
    """Train (or resume) the embedded model in `out_dir`; the EMA pipeline is saved to `out_dir/pipeline`.

    Returns {'steps', 'seconds', 'loss', 'pipeline'}: final step, wall time this call, mean loss of the
    last 100 steps, and the saved pipeline's path.
    """
    cfg = BaseTrainConfig(**overrides)
    device = resolve_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"

    pipe = build_pipeline(cfg.size, seed=cfg.seed, prediction_type=cfg.prediction_type)
    if cfg.init_from and not ckpt_path.exists():
        warm_start(pipe, cfg.init_from)
    pipe.to(device)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    noise_scheduler = training_scheduler(pipe)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    prompts = world.all_prompts()
    step, losses, log = 0, [], []
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # resume from the last checkpoint
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, expect="base-train")
        if ckpt["config"] != asdict(cfg):
            raise ValueError(
                f"{ckpt_path} was written with another config ({ckpt['config']}); use a new out_dir or the same options"
            )
        unet.load_state_dict(ckpt["unet"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for e, v in zip(ema, ckpt["ema"]):
            e.copy_(v)
        step, log = ckpt["step"], ckpt["log"]
        _set_rng_state(ckpt["rng"])

    unet.train()
    text_encoder.train()
    start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train-base")
    while step < cfg.steps:
        # render a fresh batch
        batch_prompts = [random.choice(prompts) for _ in range(cfg.batch_size)]
        seeds = [random.randrange(TRAIN_SEEDS) for _ in range(cfg.batch_size)]
        images = world.render_batch(batch_prompts, seeds)
        cond = ["" if random.random() < cfg.cond_dropout else p for p in batch_prompts]

        # forward: noise the images, predict the noise
        latents = encode_images(pipe, images)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), device=device)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        ids = tokenize(pipe.tokenizer, cond, device)
        encoder_hidden_states = text_encoder(ids)[0]
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        target = regression_target(cfg.prediction_type, alphas_cumprod, latents, noise, timesteps)
        loss = F.mse_loss(model_pred, target, reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma:
            # min-SNR weighting (Hang et al. 2023): min(snr, gamma) / snr for epsilon, min(snr, gamma) / (snr + 1) for v
            snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
            loss = loss * torch.clamp(snr, max=cfg.snr_gamma) / (snr if cfg.prediction_type == "epsilon" else snr + 1)
        loss = loss.mean()

        # step the optimiser and the EMA
        for g in optimizer.param_groups:
            g["lr"] = _lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

        # log and checkpoint
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            log.append({"step": step, "loss": sum(losses[-100:]) / len(losses[-100:]),
                        "seconds": time.time() - start})
            atomic_save({
                "kind": "base-train", "config": asdict(cfg), "step": step, "log": log,
                "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(), "ema": ema, "rng": _rng_state(),
            }, ckpt_path)
    bar.close()

    export = export_pipeline(out_dir)
    return {"steps": step, "seconds": time.time() - start,
            "loss": sum(losses[-100:]) / max(1, len(losses[-100:])), "pipeline": str(export)}


def warm_start(pipe, source: str | Path) -> None:
    """Initialise `pipe` from the saved pipeline `source` (e.g. an earlier shipped base).

    Every weight of `source` must fit; weights `source` lacks (a text-to-time embedding added since) must be
    the `add_embedding` ones, and start switched off (its output norm's gain at 0) so the warm start is exact.
    """
    from .models import load_pipeline

    src = load_pipeline(source, device="cpu")
    fix = "start from scratch (init_from='') or from a pipeline of the same size"
    try:
        pipe.text_encoder.load_state_dict(src.text_encoder.state_dict(), strict=True)
        missing, unexpected = pipe.unet.load_state_dict(src.unet.state_dict(), strict=False)
    except RuntimeError as e:  # shapes differ
        raise ValueError(f"cannot warm-start from {str(source)!r}: {str(e).splitlines()[1].strip()} ...; {fix}") from None
    bad = [k for k in missing if not k.startswith("add_embedding.")]
    if bad or unexpected:
        raise ValueError(f"cannot warm-start from {str(source)!r}: weights missing {bad[:5]}, unexpected "
                         f"{list(unexpected)[:5]}; {fix}")
    if missing:
        with torch.no_grad():
            pipe.unet.add_embedding.norm2.weight.zero_()


def export_pipeline(out_dir: str | Path) -> Path:
    """Save the EMA weights of the last checkpoint in `out_dir` as a pipeline in `out_dir/pipeline`."""
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(out_dir / "checkpoint.pt", expect="base-train")
    cfg = BaseTrainConfig(**ckpt["config"])
    pipe = build_pipeline(cfg.size, seed=cfg.seed, prediction_type=cfg.prediction_type)
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    with torch.no_grad():
        for p, e in zip(params, ckpt["ema"]):
            p.copy_(e)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    export = out_dir / "pipeline"
    pipe.save_pretrained(export)
    (export / "training.json").write_text(json.dumps({"config": ckpt["config"], "step": ckpt["step"],
                                                      "log": ckpt["log"]}, indent=1))
    return export
