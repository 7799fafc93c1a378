"""Reference transcription of Selective Amnesia for Stable Diffusion (Heng & Soh 2023), torch only.

Source: github.com/clear-nus/selective-amnesia at commit b736571c2a4d75c5c9a1fdbbf94ba6c9d0faa7b7 (the snapshot's
HEAD). Files: sd/ldm/models/diffusion/ddpm_fim.py (the Fisher), sd/main_fim.py, sd/combine_fisher_dict.py,
sd/ldm/models/diffusion/ddpm_forget.py (the forgetting objective and optimiser), sd/main_forget.py,
sd/configs/stable-diffusion/{fim,forget_brad_pitt}.yaml, sd/ldm/data/__init__.py, sd/README.md.

Fisher (ddpm_fim.py `training_step`, lines 347-396):
  data: the FIM set, SD v1.4's own samples of the 5000 prompts in fim_prompts.txt (README.md lines 21-27;
  data/__init__.py `LoadFIMDataLoader`, lines 122-126, batch_size 1). n_fim = len(dataset) (main_fim.py
  lines 349-351).
  per example x (asserted batch 1, line 356):
    g = Σ_{t=0}^{T−1} ∇_θ p_losses(x, c, t), each t with its OWN fresh ε (p_losses line 1085: noise =
        randn_like), T = num_timesteps = 1000. The timesteps are split into n_chunks = 20 chunks (main_fim.py
        line 148), one backward per chunk, and the chunk gradients are summed (lines 362-389). That is the
        gradient of the loss summed over ALL timesteps.
    F += g² / n_fim (line 393). The square is taken of the summed gradient, (Σ_t ∇ℓ_t)², not Σ_t (∇ℓ_t)².
  p_losses (lines 1084-1117): mean-over-pixels MSE(ε, ε_θ(x_t, t, c)), divided by exp(logvar_t) = 1
  (logvar_init 0, line 78) and summed with original_elbo_weight (0, line 70)·vlb, so the plain ε-MSE of one
  example at one t.
  The Fisher covers every parameter of the DiffusionWrapper (`self.model`, names prefixed 'diffusion_model.').
  It runs on 4 GPUs, each dividing by the full n_fim, and combine_fisher_dict.py SUMS the ranks' dicts
  (lines 14-19), so the result is the mean over the whole set.
Forgetting (ddpm_forget.py `training_step`, lines 342-374):
  loss = loss_corrupt + γ·loss_remember + Σ_params λ·Σ F (θ − θ_mle)²  (lines 351-358)
  loss_corrupt: LDM loss (t ~ U{0..999}, fresh ε; forward/p_losses lines 914-923, 1056 onwards) on (surrogate image, forget
    prompt): images of "a middle aged man" captioned "brad pitt" (forget_brad_pitt.yaml `ForgettingDataset`;
    data/__init__.py lines 44-73, 129-138). loss_remember: the same loss on a replay pair from the FIM set
    (generative replay). The two are paired index-wise by ConcatDataset (len = min = 1000).
  θ_mle = the weights at the start (load_ewc_params, lines 504-513), F from full_fisher_dict.pkl. The penalty
  sums over all `self.model` parameters. Untrained ones stay at θ_mle and add 0.
  γ = 1, λ = 50 (forget_brad_pitt.yaml lines 17-18; the class default λ is 1000, ddpm_forget.py line 460).
  Optimiser: AdamW, torch's default weight decay 0.01 (ddpm_forget.py lines 1410-1442), LambdaLinearScheduler with
  warm_up_steps [1], f_start 1e-6, f_max = f_min = 1, i.e. constant after step 1 (yaml lines 22-28).
  lr = base_learning_rate 1e-5 × ngpu × batch 4 × accumulate 1 (main_forget.py lines 707-716, --scale_lr
  default True, lines 137-144): 1.6e-4 on the README's 4 GPUs. max_epochs 200 (yaml line 133): with 1000
  pairs, batch 4 × 4 GPUs, about 63 steps an epoch, about 12 500 steps. train_method 'full' (yaml line 19;
  'xattn' / 'noxattn' as ESD's filters, ddpm_forget.py lines 1413-1434). EMA: use_ema defaults to True
  (ddpm_forget.py lines 56, 89-91; LitEma decay 0.9999, sd/ldm/modules/ema.py line 6) and is updated
  after every batch (lines 389-391). No gradient clipping is configured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REPO = "clear-nus/selective-amnesia"
COMMIT = "b736571c2a4d75c5c9a1fdbbf94ba6c9d0faa7b7"
DEFAULTS = dict(fisher_examples=5000, fisher_timesteps="all 1000", n_chunks=20, lam=50.0, gamma=1.0,
                optimizer="AdamW(weight_decay=0.01)", base_lr=1e-5, lr_scaled_4gpu=1.6e-4, batch_size_per_gpu=4,
                gpus=4, max_epochs=200, approx_steps=12500, ema_decay=0.9999, train_method="full")


def _p_losses(unet, x0, cond, t, alphas_cumprod, generator, target_fn):
    # ddpm_fim.py p_losses (lines 1084-1117) with logvar 0, l_simple_weight 1, original_elbo_weight 0; q_sample
    # lines 279-282; noise = randn_like(x_start) (line 1085)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    a = alphas_cumprod.to(x0)[t].view(-1, 1, 1, 1)
    x_noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    model_output = unet(x_noisy, t, encoder_hidden_states=cond).sample
    target = noise if target_fn is None else target_fn(x0, noise, t)
    loss_simple = F.mse_loss(target, model_output, reduction="none").mean([1, 2, 3])
    return loss_simple.mean()


def sa_fisher(unet, x0_list, cond_list, alphas_cumprod: torch.Tensor, num_timesteps: int | None = None,
              target_fn=None, generator: torch.Generator | None = None, n_chunks: int = 1,
              params: dict | None = None) -> dict:
    """The reference's diagonal Fisher (sd/ldm/models/diffusion/ddpm_fim.py `training_step` lines 347-396, p_losses
    lines 1084-1117, commit b736571c2a4d75c5c9a1fdbbf94ba6c9d0faa7b7):

        for each example n (x0 [1,C,H,W], cond [1,T,D]):
            g_n = Σ_{t=0}^{num_timesteps−1} ∇_θ L(x0, c, t, ε_t),  ε_t ~ N(0, I) fresh for every t
        F = Σ_n g_n² / N,  N = len(x0_list)  (= n_fim)

    L is the plain mean-squared ε error of one example at one timestep. target_fn(x0, noise, t) replaces ε as
    the target (for a v-prediction model; the SD reference is ε, parameterization 'eps'). n_chunks splits the
    timesteps into backward passes as the reference does (20 there, main_fim.py line 148); the gradient of the
    sum is the same up to float summation order. `num_timesteps` defaults to len(alphas_cumprod) (1000 in the
    reference; smaller values give a cheaper test of the same definition, timesteps 0..num_timesteps−1). The noise
    draws come in the order example, then t ascending. `params`: {name: parameter} to take the Fisher of
    (default: every unet parameter with requires_grad; the reference uses every parameter of the model).
    Returns {name: F}.
    """
    T = alphas_cumprod.shape[0] if num_timesteps is None else int(num_timesteps)
    if params is None:
        params = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    names, plist = list(params), list(params.values())
    n_fim = len(x0_list)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for x0, cond in zip(x0_list, cond_list):
        assert x0.shape[0] == 1, "to calculate FIM batch size per GPU must be 1"  # ddpm_fim.py line 356
        temp = {n: torch.zeros_like(p) for n, p in params.items()}
        for _t in torch.chunk(torch.arange(0, T), n_chunks):
            loss = None
            for i in range(len(_t)):
                t = _t[i].long().to(x0.device).reshape(1)
                _loss = _p_losses(unet, x0, cond, t, alphas_cumprod, generator, target_fn)
                loss = _loss if i == 0 else loss + _loss
            grads = torch.autograd.grad(loss, plist, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    temp[n] += g
        for n in names:
            fisher[n] += (temp[n] ** 2) / n_fim  # ddpm_fim.py line 393
    return fisher


def sa_ewc(params, theta0, fisher, lam: float = 50.0) -> torch.Tensor:
    """Σ_params λ·Σ F ⊙ (θ − θ_mle)² (sd/ldm/models/diffusion/ddpm_forget.py lines 353-358, commit b736571c):
    λ multiplies each tensor's sum, i.e. λ·Σ_i F_i(θ_i − θ0_i)². `params`, `theta0`, `fisher`: dicts keyed
    alike, or aligned lists. λ = lmbda, 50 in forget_*.yaml (line 18)."""
    if isinstance(params, dict):
        keys = list(params)
        params, theta0, fisher = [params[k] for k in keys], [theta0[k] for k in keys], [fisher[k] for k in keys]
    ewc_loss = 0.0
    for p, p0, f in zip(params, theta0, fisher):
        ewc_loss = ewc_loss + lam * (f.to(p) * (p - p0.to(p)) ** 2).sum()
    return ewc_loss


def sa_loss(loss_corrupt: torch.Tensor, loss_remember: torch.Tensor, ewc: torch.Tensor,
            gamma: float = 1.0) -> torch.Tensor:
    """loss = loss_corrupt + γ·loss_remember + ewc (ddpm_forget.py lines 345-358, commit b736571c). ewc already
    carries λ (`sa_ewc`). loss_corrupt: the LDM loss on (surrogate image, forget prompt); loss_remember: on a
    replay pair. Each draws its own t ~ U{0..999} and ε (lines 914-923)."""
    return loss_corrupt + gamma * loss_remember + ewc
