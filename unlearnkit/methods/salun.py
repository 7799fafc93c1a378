"""SalUn (Fan et al. 2024): relabelling, on the weights most salient for forgetting only.

    G = Σ_batches ∇_θ ℓ_mask,  m = 1[|G| among the int(ratio·N) largest]                      (docs/METHODS.md, eq. 10)
    L_SalUn(θ) = ‖ε_θ(x_t^f, c_f, t) − sg[ε_θ(x_t^f, c_rand, t)]‖² + α·L_simple(θ; x_r, c_r)       (eq. 11)

and θ ← θ − lr·(m ⊙ ∇L): the loop multiplies the gradients by m (`mask_gradients`). As its authors build the mask
(OPTML-Group/Unlearn-Saliency, SD/train-scripts/generate_mask.py lines 33-107, commit a6e89fd): ℓ_mask is
−‖ε − ((1+w)ε_θ(x_t, c_f) − w ε_θ(x_t, ∅))‖², the *guided* prediction with w = 7.5 (`mask_loss="guided"`), summed
over one pass of the forget data, and exactly int(ratio·N) weights are kept, ranked over the whole trained set. The
kit's earlier mask took the plain conditional loss on `mask_batches` random batches (`mask_loss="conditional"`).
c_rand: the authors relabel every row to one fixed other class, the next one (random_label.py lines 80-83;
`relabel="next"`: the first of `task.relabel_concepts`); `relabel="random"` draws one per forget prompt.
Kept from the kit: gradient clipping at max_grad_norm (theirs: none; 0 turns it off).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .. import losses
from .base import Method, UnlearnConfig, register_method

MASK_SEED_OFFSET = 50_000  # the mask's draws: a generator of their own (the training batches do not depend on it)


@dataclass
class SalUnConfig(UnlearnConfig):
    """SalUn (Fan et al. 2024): relabelling on a weight-saliency mask. SD: lr 1e-5, α=0.5, 5 epochs, batch 8."""

    lr: float = 1e-4
    alpha: float = 0.5  # weight of L_simple on retain data (the authors' README: 0.5)
    mask_ratio: float = 0.5  # share of parameters (largest |G|) that may change
    mask_loss: str = "guided"  # 'guided': the authors' (1+w)ε(x_t,c) − wε(x_t,∅); 'conditional': plain L_simple
    mask_guidance: float = 7.5  # w of the guided mask loss (the authors' c_guidance)
    mask_batches: int | None = None  # None: one pass over the forget data (the authors'); N: N random batches
    relabel: str = "next"  # 'next': every row to one other concept (the authors'); 'random': one per forget prompt

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if self.mask_loss not in ("guided", "conditional"):
            raise ValueError(f"unknown mask_loss {self.mask_loss!r}; choose 'guided' (the authors') or 'conditional'")
        if self.relabel not in ("next", "random"):
            raise ValueError(f"unknown relabel {self.relabel!r}; choose 'next' (the authors') or 'random'")
        if self.mask_batches is not None and self.mask_batches <= 0:
            raise ValueError(f"mask_batches must be > 0 or None (one pass over the forget data), got {self.mask_batches}")


def mask_loss(ctx, cfg: SalUnConfig, b) -> torch.Tensor:
    """ℓ_mask on the forget batch b: −‖target − ((1+w)ε_θ(x_t, c_f) − w ε_θ(x_t, ∅))‖² ('guided', generate_mask.py
    lines 57-62) or L_simple(θ; x_f, c_f) ('conditional'). Only |∇ℓ| is used: the sign does not matter."""
    cond = ctx.model(b.x_t, b.t, ctx.e_f[b.idx])
    if cfg.mask_loss == "conditional":
        return losses.simple_loss(cond, b.target)
    uncond = ctx.model(b.x_t, b.t, ctx.null(len(b.idx)))
    return -losses.simple_loss((1 + cfg.mask_guidance) * cond - cfg.mask_guidance * uncond, b.target)


def _mask_batches(ctx, cfg: SalUnConfig):
    # the forget rows the mask sees: one pass in order, batch_size at a time (the authors'), or random batches
    gen = torch.Generator("cpu").manual_seed(cfg.seed + MASK_SEED_OFFSET)
    if cfg.mask_batches is not None:
        return [ctx.draw("forget", generator=gen) for _ in range(cfg.mask_batches)]
    rows = torch.arange(len(ctx.x_f))
    return [ctx.draw_rows("forget", idx, generator=gen) for idx in rows.split(cfg.batch_size)]


@register_method("salun")
class SalUn(Method):
    config_class = SalUnConfig

    def prepare(self, ctx):
        # the saliency mask: |Σ ∇ℓ_mask| over the mask's batches, its top `mask_ratio` share kept
        grads = [torch.zeros_like(p) for p in ctx.params]
        for b in _mask_batches(ctx, self.config):
            for acc, g in zip(grads, torch.autograd.grad(mask_loss(ctx, self.config, b), ctx.params)):
                acc += g.detach()
        grads = [ctx.accelerator.reduce(g, reduction="mean") for g in grads]  # several processes: one mask for all
        names = [n for n, _ in ctx.trainable]
        mask = losses.saliency_mask(dict(zip(names, grads)), self.config.mask_ratio)
        del grads  # (the summed gradients are as large as the trained weights: gone before the first step)
        self._masks = [mask[n] for n in names]  # bool, the state's own tensors: 1 byte per weight, kept once
        # the relabelled prompts c_rand, one per forget row
        if self.config.relabel == "next" and ctx.task.relabel_concepts:
            relabelled = [ctx.task.swap(p, ctx.task.relabel_concepts[0]) for p in ctx.forget_prompts]
        else:
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
