"""ESD, Erased Stable Diffusion (Gandikota et al. 2023): regress the forget prompt onto negative guidance.

    L_ESD(θ) = ‖ε_θ(x_t, c_f, t) − sg[ε_θ0(x_t, ∅, t) − η(ε_θ0(x_t, c_f, t) − ε_θ0(x_t, ∅, t))]‖²   (docs/METHODS.md, eqs. 8-9)

ESD-x trains the cross-attention only (`params="xattn"`), ESD-u everything else (`"non-xattn"`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from ..sampling import partial_sample
from .base import Method, UnlearnConfig, register_method


@dataclass
class ESDConfig(UnlearnConfig):
    """Erased Stable Diffusion (Gandikota et al. 2023). SD: η=1, lr 1e-5, 1000 steps, batch 1."""

    lr: float = 3e-4  # measured on the embedded object task: 1e-4 left forget rate 0.5, 3e-4 brings it to 0
    params: str = "xattn"  # esd-x: cross-attention only; esd-u: 'non-xattn'; or 'lora' (adapters on lora_targets)
    lora_targets: str = "attn2"  # with params="lora": esd-x's adapters on the cross-attention (esd-u: attn1)
    eta: float = 1.0  # negative guidance strength η
    x_t: str = "data"  # 'data': noise the base images x_f (cheaper); 'sample': partial DDIM sampling with c_f

    def __post_init__(self):
        super().__post_init__()
        if self.x_t not in ("data", "sample"):
            raise ValueError(f"unknown x_t {self.x_t!r}; choose 'data' or 'sample'")


@register_method("esd-u", params="non-xattn", lora_targets="attn1")
@register_method("esd-x", params="xattn", lora_targets="attn2")
class ESD(Method):
    config_class = ESDConfig

    def step(self, ctx, forget):
        x_t, t, cond = forget.x_t, forget.t, ctx.e_f[forget.idx]
        if self.config.x_t == "sample":  # the paper's x_t: the model's own partial sample from the forget prompt
            x_t, t = partial_sample(ctx.unet, ctx.pipe, cond, ctx.e_null, forget.noise, t)
        pred = ctx.train(x_t, t, cond)
        base_cond, base_uncond = ctx.frozen(x_t, t, cond), ctx.frozen(x_t, t, ctx.null(len(x_t)))

        def loss(out):
            target = losses.esd_target(out[base_uncond], out[base_cond], self.config.eta)
            return losses.regression_loss(out[pred], target)

        return loss
