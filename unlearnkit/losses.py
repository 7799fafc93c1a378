"""Loss terms of every method, as pure functions: tensors in, a scalar (or a target) out.

Equations are numbered as in `docs/METHODS.md` (the kit's specification); the baselines follow
their original papers. Saddle and OVW are *as formulated in unlearnkit*: the paper's body is not
available, so they are our reading of its abstract and figure captions. Every constant is an
argument (a config field upstream), never a literal here. `*_pred` are UNet outputs ε_θ, `base_*`
are frozen-base outputs ε_θ0 computed under no_grad, `noise` is the ε that produced x_t.

For a v-prediction model (our embedded base, SD 2.x) every ε above reads as the model's target:
the loop passes v = √ᾱ_t ε − √(1−ᾱ_t) x_0 wherever an equation has ε, and the UNet's outputs are v's;
the equations are linear in the outputs, so ESD's and OVW's targets carry over unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a UNet may predict: SD 1.x ε, SD 2.x and the embedded base v


def check_prediction_type(prediction_type: str) -> str:
    """`prediction_type` itself, or a ValueError naming it and the supported ones."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; unlearnkit trains and samples "
                         f"{' and '.join(map(repr, PREDICTION_TYPES))} models")
    return prediction_type


def regression_target(prediction_type: str, alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses at x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε: ε ('epsilon', SD 1.x) or
    v = √ᾱ_t ε − √(1−ᾱ_t) x0 ('v_prediction', SD 2.x and the embedded base; Salimans & Ho 2022)."""
    if check_prediction_type(prediction_type) == "epsilon":
        return noise
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The forward process q(x_t | x0): x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4; docs/METHODS.md, eq. 1)."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def simple_loss(model_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_simple = E ‖ε − ε_θ(x_t, c, t)‖² (Ho et al. 2020, eq. 14; docs/METHODS.md, eq. 3), mean over all elements."""
    return F.mse_loss(model_pred.float(), noise.float())


def ga_loss(forget_pred: torch.Tensor, forget_noise: torch.Tensor, retain_pred: torch.Tensor | None = None,
            retain_noise: torch.Tensor | None = None, alpha: float = 0.0) -> torch.Tensor:
    """Gradient ascent: −L_simple(θ; x_f, c_f) + α·L_simple(θ; x_r, c_r) (docs/METHODS.md, eq. 7). Unbounded below."""
    loss = -simple_loss(forget_pred, forget_noise)
    if alpha and retain_pred is not None:
        loss = loss + alpha * simple_loss(retain_pred, retain_noise)
    return loss


def esd_target(base_uncond: torch.Tensor, base_cond: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's negatively guided target ε_θ0(x_t, ∅, t) − η(ε_θ0(x_t, c_f, t) − ε_θ0(x_t, ∅, t)).

    Gandikota et al. 2023; docs/METHODS.md, eq. 8. Computed from the frozen base: the caller wraps it in no_grad.
    """
    return base_uncond - eta * (base_cond - base_uncond)


def regression_loss(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖ε_θ(x_t, c, t) − sg[target]‖²: ESD (eq. 4), SalUn's relabelling and OVW's overwrite all have this form."""
    return F.mse_loss(model_pred.float(), target.detach().float())


def salun_loss(forget_pred: torch.Tensor, random_target: torch.Tensor, retain_pred: torch.Tensor,
               retain_noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """SalUn (Fan et al. 2024; docs/METHODS.md, eq. 11): ‖ε_θ(x_t^f, c_f) − sg[ε_θ(x_t^f, c_rand)]‖² + α·L_simple(θ; x_r, c_r).

    The saliency mask is applied to the gradients by the training loop, not here.
    """
    return regression_loss(forget_pred, random_target) + alpha * simple_loss(retain_pred, retain_noise)


def saliency_mask(grads: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """SalUn's weight-saliency mask (docs/METHODS.md, eq. 10): exactly int(ratio·N) of the N weights, those with the
    largest |gradient|, ranked over all tensors at once (OPTML-Group/Unlearn-Saliency, SD/train-scripts/
    generate_mask.py lines 84-104, commit a6e89fd). Ties at the threshold are kept in flattened order, as many as
    the count allows (the authors': argsort's order). Returns {name: bool tensor}.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"saliency ratio must be in (0, 1], got {ratio}")
    flat = torch.cat([g.abs().flatten().float() for g in grads.values()])
    k = max(1, int(ratio * flat.numel()))
    # the k-th largest |gradient|, by selection: topk(k) would keep k values and k int64 indices (5 GiB for
    # half of SD's 860M weights), kthvalue keeps one
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    ties = k - int((flat > threshold).sum())  # weights equal to the threshold that still fit
    del flat
    mask = {}
    for name, g in grads.items():
        a = g.abs().float()
        m, tie = a > threshold, a == threshold
        if ties > 0 and tie.any():
            order = tie.flatten().cumsum(0).view_as(tie)  # 1, 2, ... over this tensor's ties, in flattened order
            m |= tie & (order <= ties)
            ties -= int(min(ties, int(tie.sum())))
        mask[name] = m
    return mask


EWC_CHUNK = 2**26  # elements per group of parameter tensors the EWC penalty works on at once (256 MB in fp32)


def _groups(tensors: list[torch.Tensor], limit: int | None = None):
    # consecutive index ranges of `tensors`, each holding at most `limit` (EWC_CHUNK) elements, or one larger tensor
    limit, start, size = limit or EWC_CHUNK, 0, 0
    for i, t in enumerate(tensors):
        if size and size + t.numel() > limit:
            yield start, i
            start, size = i, 0
        size += t.numel()
    if start < len(tensors):
        yield start, len(tensors)


class _EWCPenalty(torch.autograd.Function):
    # Σ F (θ − θ0)² with its gradient 2F(θ − θ0) written out: nothing the size of the weights is kept between the
    # forward and the backward (autograd through the _foreach ops kept √F ⊙ (θ − θ0) and √F: two more copies of the
    # trained weights, 6.4 GiB on SD's UNet), and each group's temporaries die before the next group's
    @staticmethod
    def forward(ctx, theta0, fisher, *params):
        ctx.theta0, ctx.fisher = theta0, fisher  # constants of the run, not saved activations
        ctx.save_for_backward(*params)
        norms = []
        for a, b in _groups(params):
            d = torch._foreach_sub([p.float() for p in params[a:b]], [t.float() for t in theta0[a:b]])
            torch._foreach_mul_(d, torch._foreach_sqrt(fisher[a:b]))
            norms += torch._foreach_norm(d)
        return torch.stack(norms).square().sum()

    @staticmethod
    def backward(ctx, grad):
        params, grads = ctx.saved_tensors, []
        for a, b in _groups(params):
            d = torch._foreach_sub([p.float() for p in params[a:b]], [t.float() for t in ctx.theta0[a:b]])
            torch._foreach_mul_(d, ctx.fisher[a:b])
            torch._foreach_mul_(d, 2 * grad)
            grads += [g.to(p.dtype) for g, p in zip(d, params[a:b])]
        return None, None, *grads


def ewc_penalty(params: Iterable[torch.Tensor], base_params: Iterable[torch.Tensor],
                fisher: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ_i F_i (θ_i − θ0_i)², the elastic-weight-consolidation term of Selective Amnesia (Heng & Soh 2023; docs/METHODS.md, eq. 14).

    Written as Σ_k ‖√F_k ⊙ (θ_k − θ0_k)‖² over the parameter tensors k with `torch._foreach_*` ops (a few fused
    kernels per group of tensors instead of four per tensor: a few hundred per step on a UNet), and its gradient
    2F ⊙ (θ − θ0) by hand, so no copy of the weights waits for the backward.
    """
    params, base_params, fisher = list(params), list(base_params), list(fisher)
    if not params:
        raise ValueError("ewc_penalty needs at least one parameter")
    return _EWCPenalty.apply(base_params, fisher, *params)


def sa_loss(surrogate_pred: torch.Tensor, surrogate_noise: torch.Tensor, replay_pred: torch.Tensor,
            replay_noise: torch.Tensor, penalty: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Selective Amnesia: L_simple(θ; x_a, c_f) + γ·L_simple(θ; replay) + λ·Σ F(θ − θ0)² (docs/METHODS.md, eq. 15)."""
    return simple_loss(surrogate_pred, surrogate_noise) + gamma * simple_loss(replay_pred, replay_noise) + lam * penalty


def help_loss(retain_pred: torch.Tensor, base_retain: torch.Tensor, uncond_pred: torch.Tensor | None = None,
              base_uncond: torch.Tensor | None = None, uncond_weight: float = 1.0) -> torch.Tensor:
    """L_help = E_R ‖ε_θ(x_t, c, t) − ε_θ0(x_t, c, t)‖² + β_∅·E_R ‖ε_θ(x_t, ∅, t) − ε_θ0(x_t, ∅, t)‖².

    docs/METHODS.md, eq. 5: distillation to the base on retain data plus the unconditional branch.
    """
    loss = regression_loss(retain_pred, base_retain)
    if uncond_weight and uncond_pred is not None:
        loss = loss + uncond_weight * regression_loss(uncond_pred, base_uncond)
    return loss


def constrained_lagrangian(objective: torch.Tensor, violation: torch.Tensor, mu: float | torch.Tensor,
                           weight: float = 1.0) -> torch.Tensor:
    """L(θ, μ) = w·f(θ) + μ·g(θ) for min_θ f(θ) s.t. g(θ) ≤ 0 (docs/METHODS.md, eq. 17; μ ≥ 0 a constant here).

    Saddle's constraint forms (unlearnkit's reformulations): g = L_ovw − τ (the overwrite reached), g = L_ESD − τ
    (ESD's regression reached) or g = τ − L_F (the forget loss pushed up to τ), f = L_help."""
    if isinstance(mu, torch.Tensor):
        mu = mu.detach().to(violation.dtype)
    return weight * objective + mu * violation


def dual_ascent(mu: float | torch.Tensor, violation: float | torch.Tensor, mu_lr: float) -> float | torch.Tensor:
    """Projected ascent on the multiplier of g ≤ 0: μ ← max(0, μ + η_μ·g) (docs/METHODS.md, eq. 22). A float, or a 0-dim tensor like μ."""
    if isinstance(mu, torch.Tensor):
        return torch.clamp(mu + mu_lr * torch.as_tensor(violation).detach().to(mu), min=0.0)
    return max(0.0, mu + mu_lr * float(violation))
