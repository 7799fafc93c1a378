"""Reference transcription of SalUn for Stable Diffusion (Fan et al. 2024, "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency …"), torch only.

Source: github.com/OPTML-Group/Unlearn-Saliency at commit a6e89fd17ff737c24c6aa16c9574469a234ffd91 (the snapshot's
HEAD): SD/train-scripts/generate_mask.py (the saliency mask), SD/train-scripts/random_label.py (the relabelling
training), SD/train-scripts/dataset.py (data), SD/README.md (the commands), SD/ldm/models/diffusion/ddpm.py (the
LatentDiffusion loss behind `shared_step`).

The procedure:
  Mask (generate_mask.py `generate_mask`, lines 8-108; run as README.md line 17 with the defaults of lines 219-291):
    for every batch of the forget set (dataset.py `setup_forget_data` lines 156-164: the Imagenette train images
    of the class, in order, batch_size 8; ONE pass over all of them, epochs is unused):
      t ~ U{0..999}, ε ~ N(0, I), x_t = q_sample(x0, t, ε) (lines 50-55)
      preds = (1 + w)·ε_θ(x_t, c) − w·ε_θ(x_t, ∅),  w = c_guidance = 7.5 (lines 57-60, default line 231)
      loss = −MSE(ε, preds) (line 62), backward, and the gradients are SUMMED over batches (lines 64-69;
      optimizer.zero_grad() between batches, line 35; the optimiser never steps)
    G ← |Σ_batches ∇|, per parameter of the whole UNet (model.model.diffusion_model, lines 30-31, 71-73)
    mask: one GLOBAL ranking over all UNet weights, keep the int(N·0.5) largest |G| (threshold_list = [0.5],
    lines 78-108; `salun_mask`). The prompt c is "an image of a {class name}" (dataset.py line 161).
  Training (random_label.py `certain_label`, lines 13-143; README.md line 25: --train_method full --alpha 0.5
  --lr 1e-5 --epochs 5):
    per step: a forget batch (8 images of the class) and a remain batch (8 images of other classes, dataset.py
    lines 144-153, cycling, lines 72-76)
      remain_loss = model.shared_step(remain_batch)[0]: the LDM loss, t ~ U{0..999} and fresh ε of its own,
        mean MSE (ddpm.py lines 1093-1109, 1286-1324, with logvar_init 0 (line 90),
        l_simple_weight 1, original_elbo_weight 0)
      pseudo prompt = descriptions[(class_to_forget + 1) % 10] for every row (lines 80-83): the NEXT class,
        fixed, not random
      forget_out = ε_θ(x_t, c_f); pseudo_out = ε_θ(x_t, c_pseudo).detach(), the CURRENT model at the same x_t
      (pseudo_noisy = q_sample of the same images with the same t and ε, lines 111-123)
      loss = MSE(forget_out, pseudo_out) + α·remain_loss (lines 125-128)
      backward; p.grad *= mask[name] for every parameter (lines 132-137); Adam step (lines 56, 139). No grad
      clipping.
    trained parameters: 'full' = all UNet parameters, or 'xattn' = names containing 'attn2' (lines 46-54).
    Defaults (lines 214-296): alpha 0.1 in argparse (the README runs 0.5), batch_size 8, epochs 5, lr 1e-5,
    Adam; the number of steps is epochs × ceil(|forget set| / 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REPO = "OPTML-Group/Unlearn-Saliency"
COMMIT = "a6e89fd17ff737c24c6aa16c9574469a234ffd91"
DEFAULTS = dict(mask_guidance=7.5, mask_ratio=0.5, mask_batch_size=8, mask_passes=1, train_method="full",
                alpha_readme=0.5, alpha_argparse=0.1, batch_size=8, epochs=5, lr=1e-5, optimizer="Adam",
                grad_clip=None)  # generate_mask.py 78, 226-249; random_label.py 56, 224-247; README.md 17, 25


def salun_saliency_loss(unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                        noise: torch.Tensor, guidance: float = 7.5) -> torch.Tensor:
    """The scalar generate_mask.py differentiates for one forget batch (SD/train-scripts/generate_mask.py lines
    57-62, commit a6e89fd17ff737c24c6aa16c9574469a234ffd91):

        forget_out = ε_θ(x_t, t, c);  null_out = ε_θ(x_t, t, ∅)
        preds = (1 + guidance)·forget_out − guidance·null_out
        loss = −MSELoss(noise, preds)

    `guidance` is c_guidance, default 7.5 (line 231). `noise` is the ε that made x_t. The reference is an
    ε-model; for a v-prediction model the kit would have to pass its regression target here, which the reference
    does not cover. The sign does not change the mask, since only |∇| is used.
    """
    forget_out = unet(x_t, t, encoder_hidden_states=cond).sample
    null_out = unet(x_t, t, encoder_hidden_states=uncond.expand(len(x_t), -1, -1)).sample
    preds = (1 + guidance) * forget_out - guidance * null_out
    return -F.mse_loss(noise, preds)


def salun_accumulate(gradients: dict, named_parameters) -> dict:
    """gradients[name] += param.grad for every parameter with a gradient (generate_mask.py lines 29-31, 66-69,
    commit a6e89fd1). Start from {name: 0}; call after each batch's backward (the caller zeroes grads between
    batches, as line 35 does)."""
    for name, param in named_parameters:
        if param.grad is not None:
            gradients[name] = gradients.get(name, 0) + param.grad.detach().cpu()
    return gradients


@torch.no_grad()
def salun_mask(grads: dict, ratio: float = 0.5) -> dict:
    """The hard mask as generate_mask.py builds it (SD/train-scripts/generate_mask.py lines 71-107, commit
    a6e89fd17ff737c24c6aa16c9574469a234ffd91), for one ratio i of threshold_list (= [0.5], line 78):

        gradients[name] = |G_name|
        all_elements = −cat(flatten(gradients))             # one global ranking over every tensor
        threshold_index = int(len(all_elements) · i)        # floor, not round
        ranks = argsort(argsort(all_elements))              # rank 0 = the largest |G|
        mask[name] = 1 where rank < threshold_index, else 0 # exactly int(N·i) ones; ties split by argsort order

    `grads` are the summed (not yet absolute) gradients. Returns {name: int64 0/1 tensor of the parameter's
    shape} (torch.zeros_like(tensor_ranks), line 103: int64, as the reference saves it). Ties at the
    threshold are split by torch.argsort's (unstable) order, as in the reference. Entries still 0 (a
    parameter that never got a gradient) become a 0-dim tensor there; this function does the same.
    """
    gradients = {name: torch.abs(g if isinstance(g, torch.Tensor) else torch.tensor(float(g)))
                 for name, g in grads.items()}
    all_elements = -torch.cat([tensor.flatten() for tensor in gradients.values()])
    threshold_index = int(len(all_elements) * ratio)
    positions = torch.argsort(all_elements)
    ranks = torch.argsort(positions)
    hard_dict, start_index = {}, 0
    for key, tensor in gradients.items():
        num_elements = tensor.numel()
        tensor_ranks = ranks[start_index: start_index + num_elements]
        threshold_tensor = torch.zeros_like(tensor_ranks)
        threshold_tensor[tensor_ranks < threshold_index] = 1
        hard_dict[key] = threshold_tensor.reshape(tensor.shape)
        start_index += num_elements
    return hard_dict


def salun_pseudo_prompt(class_to_forget: int, class_names: list[str]) -> str:
    """The relabelled prompt: descriptions[(class_to_forget + 1) % 10] (random_label.py lines 80-83) with
    descriptions = [f"an image of a {label}" …] (dataset.py line 149), commit a6e89fd1. Deterministic, the same
    for every row and step. The `% 10` is the reference's literal (Imagenette has 10 classes)."""
    descriptions = [f"an image of a {label}" for label in class_names]
    return descriptions[(int(class_to_forget) + 1) % 10]


def ldm_simple_loss(unet, x0: torch.Tensor, cond: torch.Tensor, alphas_cumprod: torch.Tensor,
                    generator: torch.Generator | None = None, target_fn=None) -> torch.Tensor:
    """model.shared_step(batch)[0] for SD v1 (SD/ldm/models/diffusion/ddpm.py LatentDiffusion.forward/p_losses,
    lines 1093-1109 and 1286-1324, with logvar_init = 0, l_simple_weight = 1, original_elbo_weight = 0): t ~ U{0..T−1}
    per row, fresh ε, loss = mean over rows of mean-over-pixels ‖ε − ε_θ(x_t, t, c)‖² (= F.mse_loss for equal
    shapes). target_fn(x0, noise, t) replaces ε as the target (the reference is ε-only)."""
    T = alphas_cumprod.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    a = alphas_cumprod.to(x0)[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = unet(x_t, t, encoder_hidden_states=cond).sample
    target = noise if target_fn is None else target_fn(x0, noise, t)
    return F.mse_loss(out, target, reduction="none").mean([1, 2, 3]).mean()


def salun_rl_loss(forget_out: torch.Tensor, pseudo_out: torch.Tensor, remain_loss: torch.Tensor,
                  alpha: float = 0.5) -> torch.Tensor:
    """loss = MSELoss(forget_out, pseudo_out.detach()) + alpha·remain_loss (random_label.py lines 122-128, commit
    a6e89fd1). forget_out = ε_θ(x_t, c_f) with gradient; pseudo_out = ε_θ(x_t, c_pseudo) of the same current
    model at the same x_t, t, detached; remain_loss = `ldm_simple_loss` on a remain batch."""
    return F.mse_loss(forget_out, pseudo_out.detach()) + alpha * remain_loss


def salun_apply_mask(named_parameters, mask: dict) -> None:
    """p.grad *= mask[name] after backward, before the optimiser step, no clipping (random_label.py lines
    132-139, commit a6e89fd1; the reference strips the 'model.diffusion_model.' prefix, line 135)."""
    for n, p in named_parameters:
        if p.grad is not None:
            p.grad *= mask[n.split("model.diffusion_model.")[-1]].to(p.grad.device)
