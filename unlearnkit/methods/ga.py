"""Gradient ascent (GA): raise the denoising loss on the forget data. A sanity baseline that collapses.

    L_GA(θ) = −L_simple(θ; x_f, c_f) + α·L_simple(θ; x_r, c_r)          (docs/METHODS.md, eq. 7)
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from .base import Method, UnlearnConfig, register_method


@dataclass
class GAConfig(UnlearnConfig):
    """Gradient ascent on the forget data: a sanity baseline that collapses without a bound."""

    lr: float = 2e-5
    alpha: float = 0.0  # weight of L_simple on retain data


@register_method("ga")
class GradientAscent(Method):
    config_class = GAConfig

    def step(self, ctx, forget):
        # the forget prompt on its own noised image, and (with α) a retain example to keep
        pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])
        retain = ctx.draw("retain") if self.config.alpha else None
        retain_pred = ctx.train(retain.x_t, retain.t, ctx.e_r[retain.idx]) if retain else None

        def loss(out):
            if retain is None:
                return losses.ga_loss(out[pred], forget.target)
            return losses.ga_loss(out[pred], forget.target, out[retain_pred], retain.target, self.config.alpha)

        return loss
