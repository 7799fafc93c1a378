"""SalUn (Fan et al. 2024): random relabelling, on the weights most salient for the forget loss only.

    m = 1[|∇_θ L_simple(θ; x_f, c_f)| ≥ the (1 − ratio) quantile]              (docs/METHODS.md, eq. 10)
    L_SalUn(θ) = ‖ε_θ(x_t^f, c_f, t) − sg[ε_θ(x_t^f, c_rand, t)]‖² + α·L_simple(θ; x_r, c_r)   (eq. 11)

and θ ← θ − lr·(m ⊙ ∇L): the loop multiplies the gradients by m (`mask_gradients`). c_rand is the forget
prompt relabelled by the task (`Task.relabel`: another concept of the same kind on the embedded world).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .. import losses
from .base import Method, UnlearnConfig, register_method


@dataclass
class SalUnConfig(UnlearnConfig):
    """SalUn (Fan et al. 2024): random relabelling on a weight-saliency mask. SD: lr 1e-5, α=0.5, 5 epochs."""

    lr: float = 1e-4
    alpha: float = 0.5  # weight of L_simple on retain data
    mask_ratio: float = 0.5  # share of parameters (largest |∇ L_F|) that may change
    mask_batches: int = 4  # forget batches averaged for the saliency gradient

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")


@register_method("salun")
class SalUn(Method):
    config_class = SalUnConfig

    def prepare(self, ctx):
        # the saliency mask: |∇ L_F| summed over a few forget batches, its top `mask_ratio` share kept
        grads = [torch.zeros_like(p) for p in ctx.params]
        for _ in range(self.config.mask_batches):
            b = ctx.draw("forget")
            loss = losses.simple_loss(ctx.model(b.x_t, b.t, ctx.e_f[b.idx]), b.target)
            for acc, g in zip(grads, torch.autograd.grad(loss, ctx.params)):
                acc += g.detach()
        grads = [ctx.accelerator.reduce(g, reduction="mean") for g in grads]  # several processes: one mask for all
        names = [n for n, _ in ctx.trainable]
        mask = losses.saliency_mask(dict(zip(names, grads)), self.config.mask_ratio)
        del grads  # (the summed gradients are as large as the trained weights: gone before the first step)
        self._masks = [mask[n] for n in names]  # bool, the state's own tensors: 1 byte per weight, kept once
        # the relabelled prompts c_rand, one per forget row
        rng = random.Random(self.config.seed)
        relabelled = [ctx.task.relabel(p, rng) for p in ctx.forget_prompts]
        self._e_rand = ctx.encode_prompts(relabelled)
        self.state = {"mask": mask, "relabelled": list(zip(ctx.forget_prompts, relabelled))}

    def step(self, ctx, forget):
        random_target = ctx.current(forget.x_t, forget.t, self._e_rand[forget.idx])  # sg[ε_θ(x_t, c_rand)]
        retain = ctx.draw("retain")
        pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])
        retain_pred = ctx.train(retain.x_t, retain.t, ctx.e_r[retain.idx])

        def loss(out):
            return losses.salun_loss(out[pred], out[random_target], out[retain_pred], retain.target, self.config.alpha)

        return loss

    def mask_gradients(self, params):
        # m ⊙ ∇L for every parameter at once (one fused call, not one per tensor)
        pairs = [(p.grad, m) for p, m in zip(params, self._masks) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
