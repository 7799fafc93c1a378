"""OVW, the paper's overwrite (as formulated in unlearnkit: the paper's body is not available).

    L_OVW(θ) = ‖ε_θ(x_t, c_f, t) − sg[ε_θ0(x_t, c_a, t)]‖² + λ_help·L_help(θ)          (docs/METHODS.md, eq. 23)

The forget prompt is taught to predict what the base predicts for its anchor prompt c_a (the concept replaced
by a neutral one); L_help keeps everything else at the base. `ovw-nohelp` is the same with λ_help = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from .base import Method, UnlearnConfig, register_method


@dataclass
class OVWConfig(UnlearnConfig):
    """OVW, the paper's overwrite (as formulated in unlearnkit): ε_θ(x_t, c_f) → ε_θ0(x_t, c_a), plus L_help."""

    lr: float = 1e-4
    help_weight: float = 1.0  # 0 gives the paper's "OVW without L_help" (Figure 1)
    x_t: str = "forget"  # noise x_f ('forget'), the anchor images x_a ('anchor') or half of each ('both')

    def __post_init__(self):
        super().__post_init__()
        if self.x_t not in ("forget", "anchor", "both"):
            raise ValueError(f"unknown x_t {self.x_t!r}; choose 'forget', 'anchor' or 'both'")


@register_method("ovw-nohelp", help_weight=0.0)
@register_method("ovw")
class Overwrite(Method):
    config_class = OVWConfig
    needs_anchors = True

    def step(self, ctx, forget):
        x_t = forget.x_t
        if self.config.x_t == "anchor" or (self.config.x_t == "both" and ctx.step % 2):
            x_t = ctx.add_noise(ctx.x_a[forget.idx], forget.noise, forget.t)
        pred = ctx.train(x_t, forget.t, ctx.e_f[forget.idx])
        anchor = ctx.frozen(x_t, forget.t, ctx.e_a[forget.idx])
        return lambda out: losses.regression_loss(out[pred], out[anchor])
