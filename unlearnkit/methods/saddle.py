"""Saddle, the paper's constrained method (as formulated in unlearnkit: the paper's body is not available).

    min_θ max_{μ≥0}  L(θ, μ) = λ_help·L_help(θ) + μ·(τ − L_F(θ))                      (METHODS.md, `saddle`)
    μ ← max(0, μ + η_μ(τ − L_F(θ)))                                                   (projected ascent)

L_F is the denoising loss on the forget data and τ = tau_mult × the base model's L_F: the model stays close to
the base on retain data (L_help) while its forget loss is pushed above the bound τ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from .base import Method, UnlearnConfig, register_method


@dataclass
class SaddleConfig(UnlearnConfig):
    """Saddle (paper, as formulated in unlearnkit): min_θ max_{μ≥0} λ_help·L_help + μ(τ − L_F)."""

    lr: float = 1e-4
    help_weight: float = 1.0
    tau_mult: float = 2.0  # τ = tau_mult × the base model's forget loss L_F
    mu_lr: float = 2.0  # η_μ: step size of the projected ascent on μ
    mu_init: float = 1.0  # starting multiplier


@register_method("saddle")
class Saddle(Method):
    config_class = SaddleConfig
    adds_help = False  # L_help is inside the Lagrangian
    resume_keys = ("mu",)

    def prepare(self, ctx):
        # τ: a multiple of the base model's L_F on 8 forget batches drawn from their own generator
        g = torch.Generator("cpu").manual_seed(self.config.seed + 10_000)
        vals = []
        for _ in range(8):
            b = ctx.draw("forget", generator=g)
            vals.append(losses.simple_loss(ctx.base(b.x_t, b.t, ctx.e_f[b.idx]), b.target).item())
        self.state = {"tau": self.config.tau_mult * sum(vals) / len(vals),
                      "mu": torch.tensor(float(self.config.mu_init), dtype=torch.float64, device=ctx.device)}

    def step(self, ctx, forget):
        pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])

        def loss(out):
            forget_loss = losses.simple_loss(out[pred], forget.target)
            help_term = out.help if out.help is not None else torch.zeros((), device=ctx.device)
            lagrangian = losses.saddle_lagrangian(help_term, forget_loss, self.state["mu"], self.state["tau"],
                                                  self.config.help_weight)
            return lagrangian, {"forget_loss": forget_loss}

        return loss

    def after_step(self, log):
        # projected ascent on μ, on the device (no host sync)
        log["mu"], log["tau"] = self.state["mu"], self.state["tau"]
        self.state["mu"] = losses.saddle_dual_step(self.state["mu"], self.state["tau"], log["forget_loss"],
                                                   self.config.mu_lr)
