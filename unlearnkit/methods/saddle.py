"""Saddle, the paper's constrained method (as formulated in unlearnkit: the paper's body is not available).

Stay at the base on retain data (L_help) subject to a forgetting constraint g(θ) ≤ 0, solved as a saddle point:

    min_θ max_{μ≥0}  L(θ, μ) = λ_help·L_help(θ) + μ·g(θ),      μ ← max(0, μ + η_μ·g(θ))   (projected ascent)

`constraint` picks g (τ is `tau_mult` × the constraint's loss on the base model, measured before training):
- "overwrite" (the default): g = L_ovw − τ, L_ovw = ‖ε_θ(x_t, c_f) − sg[ε_θ0(x_t, c_a)]‖² (OVW's term): the forget
  prompt must predict what the base predicts for the anchor, to within τ (tau_mult < 1). The Lagrangian
  λ·L_help + μ(L_ovw − τ) is OVW with a multiplier that grows while the bound is violated and fades once it holds.
- "forget-loss" (docs/METHODS.md, eq. 19): g = τ − L_F, L_F = L_simple on the forget data: push the denoising loss up to τ
  (tau_mult > 1). Measured: it does not remove a style (the loss rises, the style stays; docs/RESULTS.md).
- "esd": g = L_ESD − τ, L_ESD = ESD's regression onto the negatively guided target (η = 1), to within τ.

The default form and τ were chosen by `bench/tune.py --methods saddle-forms` (three τ per form on both built-in
tasks, the same rule as every method): only "overwrite" forgets on both (cpu profile, 50 steps; style: forget-loss
1.00 at τ = 2×, 5×, 10× and esd 1.00 at 0.1, 0.25, 0.5), and τ = 0.5× is its pick on both (docs/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from .base import Method, UnlearnConfig, register_method


@dataclass
class SaddleConfig(UnlearnConfig):
    """Saddle (paper, as formulated in unlearnkit): min_θ max_{μ≥0} λ_help·L_help + μ·g(θ), g = L_ovw − τ by default."""

    lr: float = 1e-4
    help_weight: float = 1.0
    constraint: str = "overwrite"  # g(θ) ≤ 0: 'overwrite' (L_ovw ≤ τ), 'forget-loss' (L_F ≥ τ), 'esd' (L_ESD ≤ τ)
    tau_mult: float | None = None  # τ = tau_mult × the constraint's loss on the base; None: TAU_MULT[constraint]
    mu_lr: float = 2.0  # η_μ: step size of the projected ascent on μ
    mu_init: float = 1.0  # starting multiplier

    def __post_init__(self):
        super().__post_init__()
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"unknown constraint {self.constraint!r}; choose one of: {', '.join(CONSTRAINTS)}")
        if self.tau_mult is None:
            self.tau_mult = TAU_MULT[self.constraint]
        if self.tau_mult <= 0:
            raise ValueError(f"tau_mult must be > 0, got {self.tau_mult}")


CONSTRAINTS = ("forget-loss", "overwrite", "esd")
# default τ multiple per form: > 1 where the loss must rise (forget-loss), < 1 where it must fall
TAU_MULT = {"forget-loss": 2.0, "overwrite": 0.5, "esd": 0.25}


@register_method("saddle")
class Saddle(Method):
    config_class = SaddleConfig
    adds_help = False  # L_help is inside the Lagrangian
    resume_keys = ("mu",)

    @property
    def needs_anchors(self):
        return self.config.constraint == "overwrite"

    def prepare(self, ctx):
        # τ: a multiple of the base model's constraint loss on 8 forget batches drawn from their own generator
        g = torch.Generator("cpu").manual_seed(self.config.seed + 10_000)
        vals = []
        for _ in range(8):
            b = ctx.draw("forget", generator=g)
            vals.append(self._constraint_loss(ctx, b, ctx.base(b.x_t, b.t, ctx.e_f[b.idx])).item())
        self._reduce = ctx.accelerator.reduce  # several processes: μ ascends on the mean constraint of all ranks
        self.state = {"tau": self.config.tau_mult * sum(vals) / len(vals),
                      "mu": torch.tensor(float(self.config.mu_init), dtype=torch.float64, device=ctx.device)}

    def _constraint_loss(self, ctx, b, pred, targets=None):
        # the loss the constraint bounds, for predictions `pred` on the forget batch b
        if self.config.constraint == "forget-loss":
            return losses.simple_loss(pred, b.target)
        anchor, cond, uncond = targets or (None, None, None)
        if self.config.constraint == "overwrite":
            anchor = anchor if anchor is not None else ctx.base(b.x_t, b.t, ctx.e_a[b.idx])
            return losses.regression_loss(pred, anchor)
        if cond is None:
            cond, uncond = ctx.base(b.x_t, b.t, ctx.e_f[b.idx]), ctx.base(b.x_t, b.t, ctx.null(len(b.idx)))
        return losses.regression_loss(pred, losses.esd_target(uncond, cond, 1.0))

    def step(self, ctx, forget):
        pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])
        queued = None
        if self.config.constraint == "overwrite":
            queued = (ctx.frozen(forget.x_t, forget.t, ctx.e_a[forget.idx]), None, None)
        elif self.config.constraint == "esd":
            queued = (None, ctx.frozen(forget.x_t, forget.t, ctx.e_f[forget.idx]),
                      ctx.frozen(forget.x_t, forget.t, ctx.null(len(forget.idx))))

        def loss(out):
            help_term = out.help if out.help is not None else torch.zeros((), device=ctx.device)
            targets = queued and tuple(out[h] if h is not None else None for h in queued)
            value = self._constraint_loss(ctx, forget, out[pred], targets)
            lagrangian = losses.constrained_lagrangian(help_term, self._violation(value), self.state["mu"],
                                                       self.config.help_weight)
            return lagrangian, {self._log_key: value}

        return loss

    @property
    def _log_key(self):
        return "forget_loss" if self.config.constraint == "forget-loss" else "constraint_loss"

    def _violation(self, value):
        # g(θ): τ − L_F for the forget-loss form (the loss must rise), L − τ for the others (it must fall)
        return self.state["tau"] - value if self.config.constraint == "forget-loss" else value - self.state["tau"]

    def after_step(self, log):
        # projected ascent on μ, on the device (no host sync)
        log["mu"], log["tau"] = self.state["mu"], self.state["tau"]
        value = self._reduce(log[self._log_key].detach(), reduction="mean")
        self.state["mu"] = losses.dual_ascent(self.state["mu"], self._violation(value), self.config.mu_lr)
