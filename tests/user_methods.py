"""Two methods of one's own, in a file of one's own: what `unlearnkit --import tests/user_methods.py` loads.

- `uce-lite`, UCE-style closed-form editing (Gandikota et al. 2024, "Unified Concept Editing", eq. 7, simplified):
  each cross-attention key / value projection W becomes the least-squares solution of
      min_W' Σ_i ‖W' c_i − W c*_i‖² + λ_p Σ_j ‖W' p_j − W p_j‖² + λ_r ‖W' − W‖²_F
      W' = (W C*ᵀC + λ_p W PᵀP + λ_r W)(CᵀC + λ_p PᵀP + λ_r I)⁻¹
  with c_i the forget prompts' token embeddings, c*_i their anchors', p_j the retain prompts'. `steps=0`: the edit
  in `prepare` is the whole method (no images, no optimiser, no backward).
- `ca-lite`, Concept Ablation's model-based loss (Kumari et al. 2023, eq. 3): ‖ε_θ(x_t^a, c_f) − sg[ε_θ(x_t^a, c_a)]‖²
  on anchor images, the target from the *current* model (`ctx.current`), not the frozen base.
"""

from dataclasses import dataclass

import torch

from unlearnkit import losses
from unlearnkit.methods import Method, UnlearnConfig, register_method


@dataclass
class UCELiteConfig(UnlearnConfig):
    steps: int = 0  # closed form
    params: str = "xattn-kv"  # attn2.to_k and attn2.to_v only
    preserve_weight: float = 1.0  # λ_p
    ridge: float = 1e-2  # λ_r


@register_method("uce-lite")
class UCELite(Method):
    config_class = UCELiteConfig
    needs_anchors = True

    @torch.no_grad()
    def prepare(self, ctx):
        c, c_star, p = (e.flatten(0, 1).double() for e in (ctx.e_f, ctx.e_a, ctx.e_r))
        cfg = self.config
        eye = torch.eye(c.shape[1], dtype=torch.float64, device=c.device)
        gram = c.T @ c + cfg.preserve_weight * p.T @ p + cfg.ridge * eye
        for name, w in ctx.trainable:
            w0 = w.double()
            target = (c_star @ w0.T).T @ c + cfg.preserve_weight * (p @ w0.T).T @ p + cfg.ridge * w0
            w.copy_(torch.linalg.solve(gram, target.T).T.to(w.dtype))  # gram is symmetric
        self.state = {"edited": [n for n, _ in ctx.trainable]}


@dataclass
class CALiteConfig(UnlearnConfig):
    lr: float = 1e-4


@register_method("ca-lite")
class CALite(Method):
    config_class = CALiteConfig
    needs_anchors = True

    def step(self, ctx, forget):
        x_t = ctx.add_noise(ctx.x_a[forget.idx], forget.noise, forget.t)  # anchor images, noised like the forget draw
        pred = ctx.train(x_t, forget.t, ctx.e_f[forget.idx])
        target = ctx.current(x_t, forget.t, ctx.e_a[forget.idx])  # the current model, no gradient
        return lambda out: losses.regression_loss(out[pred], out[target])
