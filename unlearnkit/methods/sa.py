"""Selective Amnesia (Heng & Soh 2023): a surrogate for the forget prompt, generative replay, and EWC.

    F_i = (1/N) Σ_n (∂/∂θ_i Σ_{t=0}^{T−1} ℓ(θ0; x_n, c_n, t, ε_t))²                   (docs/METHODS.md, eq. 13)
    L_SA(θ) = L_simple(θ; x_a, c_f) + γ·L_simple(θ; x_r, c_r) + λ·Σ_i F_i (θ_i − θ0_i)²         (eq. 15)

As its authors compute the Fisher (clear-nus/selective-amnesia, sd/ldm/models/diffusion/ddpm_fim.py lines 347-396,
commit b736571): per replay example, the gradient of the loss *summed over all T timesteps* (a fresh ε for each t),
squared (`fisher="reference"`); their λ = 50 is calibrated for that scale. The kit's earlier Fisher squared the
gradient at one random t (`fisher="one-t"`: about 10^4-10^5 times smaller, so λ·EWC was near 0). Their optimiser is
AdamW with weight decay 0.01 and no gradient clipping (ddpm_forget.py line 1442): the defaults here. Not (yet) as
theirs: the replay set is the task's retain images (theirs: a fixed generic set, their Fisher prompts), and there
is no EMA of the weights (theirs: decay 0.9999, updated every step).
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
    optimizer: str = "adamw"  # the authors' AdamW
    weight_decay: float = 0.01  # its (torch's default) weight decay
    max_grad_norm: float = 0.0  # the authors clip no gradient
    lam: float = 50.0  # λ on the Fisher penalty Σ F (θ − θ0)²
    gamma: float = 1.0  # γ on the replay (generative replay of retain data) loss
    fisher: str = "reference"  # 'reference': squared gradient of the loss summed over all timesteps; 'one-t'
    fisher_samples: int = 32  # replay examples whose squared gradients average into the diagonal Fisher
    fisher_chunk: int = 250  # timesteps per forward/backward pass of the reference Fisher (memory, not the result)

    def __post_init__(self):
        super().__post_init__()
        if self.fisher not in ("reference", "one-t"):
            raise ValueError(f"unknown fisher {self.fisher!r}; choose 'reference' (the authors') or 'one-t'")
        if self.fisher_samples <= 0 or self.fisher_chunk <= 0:
            raise ValueError("fisher_samples and fisher_chunk must be > 0")


def summed_gradient(unet, params, x0, cond, alphas_cumprod, target_fn, generator, chunk: int = 250):
    """∇_θ Σ_{t=0}^{T−1} ℓ(θ; x0, c, t, ε_t) for one example (x0 [1,C,H,W], cond [1,T,D]): ℓ the mean squared error
    to the regression target, ε_t ~ N(0, I) drawn from `generator` for t = 0, 1, ... in order, the timesteps run
    `chunk` at a time (the gradient of the sum is the same for any chunking, up to float summation order).
    The authors' per-example Fisher gradient (ddpm_fim.py lines 362-389). Returns a list aligned with `params`."""
    T = len(alphas_cumprod)
    noise = torch.cat([torch.randn(x0.shape, generator=generator) for _ in range(T)]).to(x0)
    total = [torch.zeros_like(p) for p in params]
    for ts in torch.arange(T, device=x0.device).split(chunk):
        x = x0.expand(len(ts), -1, -1, -1)
        eps = noise[ts]
        pred = unet(losses.add_noise(alphas_cumprod, x, eps, ts), ts, cond.expand(len(ts), -1, -1)).sample
        per_t = (pred.float() - target_fn(x, eps, ts).float()).pow(2).mean((1, 2, 3))
        for acc, g in zip(total, torch.autograd.grad(per_t.sum(), params)):
            acc += g
    return total


def diagonal_fisher(ctx, cfg: SAConfig) -> list[torch.Tensor]:
    """F_i = mean over `cfg.fisher_samples` replay examples of g_i²: g the gradient of the loss summed over all
    timesteps (`fisher="reference"`, `summed_gradient`) or at one random t (`fisher="one-t"`).

    Heng & Soh 2023; docs/METHODS.md, eq. 13, on the retain data. Returns a list aligned with `ctx.params`, every
    entry >= 0. Cached under what it depends on: the base, the model that made the data,
    the retain prompts, the parameter set (and LoRA's), the sample count and the seed (`ctx.cache_dir=False`
    turns the cache off).
    """
    key = cache_key([ctx.fingerprint, ctx.data_fingerprint, ctx.retain_prompts, cfg.params, cfg.lora_rank,
                     cfg.lora_targets, cfg.fisher_samples, cfg.seed, cfg.retain_seeds, cfg.data_steps,
                     cfg.data_guidance] + ([cfg.fisher] if cfg.fisher != "one-t" else []))
    path = (Path(ctx.cache_dir) if ctx.cache_dir else default_cache_dir()) / "fisher" / f"{key}.pt"
    if ctx.cache_dir is not False and path.exists():
        return [f.to(p.device) for f, p in zip(torch.load(path, weights_only=True), ctx.params)]
    fisher = [torch.zeros_like(p) for p in ctx.params]
    gen = torch.Generator("cpu").manual_seed(cfg.seed + 20_000)
    for _ in range(cfg.fisher_samples):
        if cfg.fisher == "reference":
            i = torch.randint(0, len(ctx.x_r), (1,), generator=gen)
            grads = summed_gradient(ctx.unet, ctx.params, ctx.x_r[i], ctx.e_r[i], ctx.alphas_cumprod, ctx.target,
                                    gen, cfg.fisher_chunk)
        else:
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
