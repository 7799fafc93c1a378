"""Concept Ablation (Kumari et al. 2023): make the forget prompt predict what the *current* model predicts for the
anchor, on anchor images.

    model-based:  L_CA(θ) = ‖ε_θ(x_t^a, c_f, t) − sg[ε_θ(x_t^a, c_a, t)]‖²                    (docs/METHODS.md, eq. 33)
    noise-based:  L_CA(θ) = ‖ε_θ(x_t^a, c_f, t) − ε‖²   (ε: the regression target)            (eq. 34)

x_t^a noises the anchor images x_a. As its authors run it (nupurkmr9/concept-ablation, diffusers/train.py lines
1091-1123, commit c11fb1bd): the target from the current UNet under no_grad (`ctx.current`; OVW w/o L_help takes
it from the frozen base), the cross-attention keys and values train (`params="xattn-kv"`, train.py lines 59-79),
AdamW with weight decay 1e-2, clipping at 1.0. Not (yet) as theirs: the start token's keys and values are not
detached, and the loss has no one-latent-pixel border mask (train.py lines 1145-1149, utils.py 165-175).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from .base import Method, UnlearnConfig, register_method


@dataclass
class CAConfig(UnlearnConfig):
    """Concept Ablation (Kumari et al. 2023). SD: lr 2e-6 × batch × GPUs (1.6e-5), 100-200 steps, batch 4."""

    lr: float = 1e-3  # the kv projections alone move slowly: the equal-budget rule picks per task (bench/tune.py)
    params: str = "xattn-kv"  # the authors' parameter group 'cross-attn' (to_k, to_v of attn2)
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    loss: str = "model"  # 'model': the current model's anchor prediction (the authors' default); 'noise': ε

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in ("model", "noise"):
            raise ValueError(f"unknown loss {self.loss!r}; choose 'model' (the authors' default) or 'noise'")


@register_method("ca-noise", loss="noise")
@register_method("ca")
class ConceptAblation(Method):
    config_class = CAConfig
    needs_anchors = True

    def step(self, ctx, forget):
        x_a = ctx.x_a[forget.idx]
        x_t = ctx.add_noise(x_a, forget.noise, forget.t)  # the anchor images, noised like the forget draw
        pred = ctx.train(x_t, forget.t, ctx.e_f[forget.idx])
        if self.config.loss == "noise":
            target = ctx.target(x_a, forget.noise, forget.t)
            return lambda out: losses.simple_loss(out[pred], target)
        anchor = ctx.current(x_t, forget.t, ctx.e_a[forget.idx])
        return lambda out: losses.regression_loss(out[pred], out[anchor])
