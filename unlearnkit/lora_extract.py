"""A LoRA from a full-weight run: the truncated SVD of each layer's weight change, as kohya's
`networks/extract_lora_from_models.py` does (kohya-ss/sd-scripts, commit 06e89800, `svd`), in peft's format so
`export` writes it as a diffusers LoRA or a kohya file.

Where it differs from kohya's: kohya puts all of S into the up matrix (the product is the same) and then clamps
both factors at the 0.99 quantile of their entries (`clamp_quantile`), which changes the product; the kit keeps the
exact truncation, so its reported error is the SVD's alone. kohya takes the LoRA network's modules (transformer
Linear layers; 3x3 convolutions only with `conv_dim`) of the UNet and the text encoders; the kit takes every
Linear and Conv2d of the UNet the run changed (the kit's methods never train the text encoder).

For a Linear or Conv2d weight of the UNet that the run changed, ΔW = W_unlearned − W_base (a convolution's
flattened to out × in·k·k) is factored ΔW ≈ B A with B = U_r √S_r, A = √S_r V_rᵀ (the rank-r truncation, which
Eckart–Young makes the best in Frobenius norm); lora_alpha = r, so the LoRA adds exactly B A. What a LoRA cannot
carry — biases and norm weights the run changed — is counted in the report, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExtractReport:
    rank: int
    layers: int  # Linear / Conv2d weights that changed, each given a LoRA
    relative_error: float  # ‖ΔW − BA‖_F / ‖ΔW‖_F over all of them together
    worst_layer: str
    worst_relative_error: float
    not_carried: list[str]  # changed parameters a LoRA has no place for (biases, norms)
    not_carried_relative_change: float  # ‖Δ‖ / ‖W_base‖ over those parameters


def extract_lora(base, unlearned, rank: int = 16):
    """(peft-format UNet state dict, peft LoraConfig, ExtractReport) for the UNet change from `base` to `unlearned`
    (pipelines or UNets of one architecture)."""
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer (the LoRA's inner dimension), got {rank!r}")
    base_unet, unet = getattr(base, "unet", base), getattr(unlearned, "unet", unlearned)
    base_params, params = dict(base_unet.named_parameters()), dict(unet.named_parameters())
    if set(base_params) != set(params):
        raise ValueError("base and unlearned UNets have different parameters: pass the base the run started from")
    base_modules = dict(base_unet.named_modules())
    state, ranks, err2, total2, worst = {}, {}, 0.0, 0.0, ("", 0.0)
    carried = set()
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        w, w0 = module.weight.detach().float(), base_modules[name].weight.detach().float().to(module.weight.device)
        if w.shape != w0.shape:
            raise ValueError(f"{name}: the base's weight has shape {tuple(w0.shape)}, the run's {tuple(w.shape)}; "
                             "pass the base the run started from")
        carried.add(f"{name}.weight")
        delta = (w - w0).flatten(1)
        if not torch.any(delta):
            continue
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        r = min(rank, s.numel())
        root = s[:r].sqrt()
        up, down = u[:, :r] * root, root[:, None] * vh[:r]
        e2, t2 = float((delta.double() - up @ down).square().sum()), float(delta.double().square().sum())
        up = up * (r / rank)  # peft scales a layer by lora_alpha / r = rank / r: undo it where r < rank
        err2, total2 = err2 + e2, total2 + t2
        worst = max(worst, (name, (e2 / t2) ** 0.5), key=lambda x: x[1])
        if isinstance(module, torch.nn.Conv2d):  # peft's conv LoRA: A a conv of the layer's kernel, B a 1x1 conv
            down = down.reshape(r, *w.shape[1:])
            up = up.reshape(*up.shape, 1, 1)
        dtype = module.weight.dtype
        state[f"{name}.lora_A.weight"] = down.to(dtype).contiguous()
        state[f"{name}.lora_B.weight"] = up.to(dtype).contiguous()
        ranks[name] = r
    if not state:
        raise ValueError("the unlearned UNet's Linear and Conv2d weights equal the base's: there is no change to "
                         "extract (pass the base the run started from, or a run that trained)")
    changed = [n for n, p in params.items() if n not in carried and not torch.equal(
        p.detach(), base_params[n].detach().to(p.device))]
    moved = sum(float((params[n].detach().float().cpu() - base_params[n].detach().float().cpu()).square().sum())
                for n in changed)
    size = sum(float(base_params[n].detach().float().square().sum()) for n in changed)
    # one rank and alpha for all layers, their exact names as targets; a layer narrower than `rank` keeps its full
    # rank (rank_pattern), its B rescaled above, so every layer adds exactly its B A (kohya: alpha / dim the same)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(ranks), init_lora_weights=False,
                        rank_pattern={n: r for n, r in ranks.items() if r != rank})
    report = ExtractReport(rank=rank, layers=len(ranks), relative_error=(err2 / total2) ** 0.5, worst_layer=worst[0],
                           worst_relative_error=worst[1], not_carried=changed,
                           not_carried_relative_change=(moved / size) ** 0.5 if size else 0.0)
    return state, config, report
