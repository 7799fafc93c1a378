"""ESD, Erased Stable Diffusion (Gandikota et al. 2023): regress the forget prompt onto negative guidance.

    L_ESD(θ) = ‖ε_θ(x_t, c_f, t) − sg[ε_θ0(x_t, ∅, t) − η(ε_θ0(x_t, c_f, t) − ε_θ0(x_t, ∅, t))]‖²   (docs/METHODS.md, eqs. 8-9)

As its authors run it (rohitgandikota/erasing, train-scripts/train-esd.py, commit b8aeab6d): x_t is a partial
DDIM sample of the *model being trained* from fresh noise under c_f (50 DDIM steps, guidance 3, stopped at t_enc
~ U{0..49}) and the UNet is asked at t ~ U[20·t_enc, 20·t_enc + 20) (`x_t="sample"`, `sampling.esd_partial_ddim`).
The kit's cheaper variant `x_t="data"` noises the base's images x_f at a uniform t. ESD-x trains the
cross-attention only (`params="xattn"`, train-esd.py lines 179-182), ESD-u everything else but the time embedding
and the output layers (`params="esd-u"`, lines 163-168; the kit's earlier set, all but attn2, is "non-xattn").
Differences kept from the authors' script: gradients are clipped at max_grad_norm (theirs: none; 0 turns it
off), and c_f is the task's whole forget prompt (theirs: the concept's word).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from ..sampling import esd_partial_ddim, esd_stop_index
from .base import Method, UnlearnConfig, register_method


@dataclass
class ESDConfig(UnlearnConfig):
    """Erased Stable Diffusion (Gandikota et al. 2023). SD: η=1, lr 1e-5, 1000 steps, batch 1."""

    lr: float = 3e-4  # measured on the embedded object task (x_t="data"): 1e-4 left forget rate 0.5, 3e-4 brings it to 0
    params: str = "xattn"  # esd-x: cross-attention only; esd-u: 'esd-u'; or 'lora' (adapters on lora_targets)
    lora_targets: str = "attn2"  # with params="lora": esd-x's adapters on the cross-attention (esd-u: attn1)
    eta: float = 1.0  # negative guidance strength η
    x_t: str = "sample"  # 'sample': the authors' partial DDIM sample of the trained model; 'data': noise x_f (cheaper)
    sample_steps: int = 50  # with x_t="sample": DDIM steps of the chain (the authors' ddim_steps)
    sample_guidance: float = 3.0  # with x_t="sample": its guidance scale (the authors' start_guidance)

    def __post_init__(self):
        super().__post_init__()
        if self.x_t not in ("data", "sample"):
            raise ValueError(f"unknown x_t {self.x_t!r}; choose 'sample' (the authors') or 'data' (cheaper)")
        if self.sample_steps <= 1:
            raise ValueError(f"sample_steps must be > 1, got {self.sample_steps}")


@register_method("esd-u", params="esd-u", lora_targets="attn1")
@register_method("esd-x", params="xattn", lora_targets="attn2")
class ESD(Method):
    config_class = ESDConfig

    def step(self, ctx, forget):
        x_t, t, cond = forget.x_t, forget.t, ctx.e_f[forget.idx]
        if self.config.x_t == "sample":  # fresh noise (the draw's ε) sampled down to t's DDIM bin by the trained model
            t_enc = esd_stop_index(t, self.config.sample_steps, ctx.num_timesteps)
            with ctx.accelerator.autocast():
                x_t = esd_partial_ddim(ctx.unet, ctx.alphas_cumprod, cond, ctx.e_null, forget.noise, t_enc,
                                       self.config.sample_steps, self.config.sample_guidance, ctx.prediction_type)
        pred = ctx.train(x_t, t, cond)
        base_cond, base_uncond = ctx.frozen(x_t, t, cond), ctx.frozen(x_t, t, ctx.null(len(x_t)))

        def loss(out):
            target = losses.esd_target(out[base_uncond], out[base_cond], self.config.eta)
            return losses.regression_loss(out[pred], target)

        return loss
