"""Selective Amnesia (Heng & Soh 2023): a surrogate for the forget prompt, generative replay, and EWC.

    F_i = E[(∂L_simple/∂θ_i)²] over replay examples                               (docs/METHODS.md, eq. 13)
    L_SA(θ) = L_simple(θ; x_a, c_f) + γ·L_simple(θ; x_r, c_r) + λ·Σ_i F_i (θ_i − θ0_i)²         (eq. 15)

The surrogate image for a forget prompt is its anchor image x_a (the concept replaced by a neutral one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import losses
from ..data import default_cache_dir
from ..io import atomic_save, cache_key
from .base import Method, UnlearnConfig, register_method


@dataclass
class SAConfig(UnlearnConfig):
    """Selective Amnesia (Heng & Soh 2023): surrogate + replay + EWC. SD: λ=50, γ=1, lr 1e-5, 200 epochs-equivalent."""

    lr: float = 1e-4
    lam: float = 50.0  # λ on the Fisher penalty Σ F (θ − θ0)²
    gamma: float = 1.0  # γ on the replay (generative replay of retain data) loss
    fisher_samples: int = 32  # replay examples whose squared gradients average into the diagonal Fisher


def diagonal_fisher(ctx, cfg: SAConfig) -> list[torch.Tensor]:
    """F_i = mean over `cfg.fisher_samples` replay examples of (∂L_simple/∂θ_i)², one example per backward pass.

    Heng & Soh 2023; docs/METHODS.md, eq. 13 (empirical Fisher of the diffusion loss) on the retain data. Returns a list aligned
    with `ctx.params`, every entry >= 0. Cached under what it depends on: the base, the model that made the data,
    the retain prompts, the parameter set (and LoRA's), the sample count and the seed (`ctx.cache_dir=False`
    turns the cache off).
    """
    key = cache_key([ctx.fingerprint, ctx.data_fingerprint, ctx.retain_prompts, cfg.params, cfg.lora_rank,
                     cfg.lora_targets, cfg.fisher_samples, cfg.seed, cfg.retain_seeds, cfg.data_steps,
                     cfg.data_guidance])
    path = (Path(ctx.cache_dir) if ctx.cache_dir else default_cache_dir()) / "fisher" / f"{key}.pt"
    if ctx.cache_dir is not False and path.exists():
        return [f.to(p.device) for f, p in zip(torch.load(path, weights_only=True), ctx.params)]
    fisher = [torch.zeros_like(p) for p in ctx.params]
    gen = torch.Generator("cpu").manual_seed(cfg.seed + 20_000)
    for _ in range(cfg.fisher_samples):
        b = ctx.draw("retain", n=1, generator=gen)
        pred = ctx.unet(b.x_t, b.t, ctx.e_r[b.idx]).sample
        grads = torch.autograd.grad(losses.simple_loss(pred, b.target), ctx.params)
        for f, g in zip(fisher, grads):
            f += g.detach() ** 2 / cfg.fisher_samples
    if ctx.cache_dir is not False:
        atomic_save([f.cpu() for f in fisher], path)
    return fisher


@register_method("sa")
class SelectiveAmnesia(Method):
    config_class = SAConfig
    needs_anchors = True

    def prepare(self, ctx):
        self._theta0 = ctx.initial_params()  # θ0, aligned with ctx.params
        self.state = {"fisher": diagonal_fisher(ctx, self.config), "names": [n for n, _ in ctx.trainable]}  # aligned

    def step(self, ctx, forget):
        retain = ctx.draw("retain")
        # the surrogate: the anchor image x_a, noised like x_f, under the forget prompt c_f
        x_a = ctx.x_a[forget.idx]
        pred = ctx.train(ctx.add_noise(x_a, forget.noise, forget.t), forget.t, ctx.e_f[forget.idx])
        retain_pred = ctx.train(retain.x_t, retain.t, ctx.e_r[retain.idx])

        def loss(out):
            penalty = losses.ewc_penalty(ctx.params, self._theta0, self.state["fisher"])
            value = losses.sa_loss(out[pred], ctx.target(x_a, forget.noise, forget.t), out[retain_pred],
                                   retain.target, penalty, self.config.gamma, self.config.lam)
            return value, {"ewc": penalty}

        return loss
