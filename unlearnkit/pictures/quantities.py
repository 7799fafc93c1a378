"""What a method works with, made visible (the method notebooks 03–07 and 14): where the weights moved, which weights
SalUn freed, where SA's Fisher sits, ESD's negatively guided target, OVW's and Concept Ablation's anchor targets as
images, UCE's edited keys and values, Forget-Me-Not's attention maps, and the model sampled along its steps
(`Snapshots`, `snapshot_images`).

Every function reads a result or a model and returns plain numbers or images; `figures.py` draws them.
"""

from __future__ import annotations

import torch

from ..backbone import decode_latents, encode_images, encode_prompts, pipeline_device, training_scheduler, with_unet
from ..data import cached_sample_pairs
from ..losses import add_noise, esd_target
from ..train import Snapshots  # noqa: F401  (the callback lives with the loop; kept here for the notebooks)


def block_of(name: str) -> str:
    """The UNet block a parameter belongs to: 'down_blocks.1', 'mid_block', 'up_blocks.0', 'conv_in', ..."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]


def _layer_label(name: str) -> str:
    # 'up_blocks.0.attentions.1.transformer_blocks.0.attn2' -> 'up 0.1'; 'mid_block.attentions.0...' -> 'mid 0'
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        return f"{parts[0].split('_')[0]} {parts[1]}.{parts[3]}"
    return f"{parts[0].split('_')[0]} {parts[2]}"


def _by_block(pairs) -> dict[str, list]:
    out = {}
    for name, value in pairs:
        out.setdefault(block_of(name), []).append(value)
    return out


@torch.no_grad()
def weight_change(base_unet, unet) -> dict[str, float]:
    """‖θ − θ0‖ / ‖θ0‖ per UNet block (the relative distance the unlearning moved each block)."""
    before = dict(base_unet.named_parameters())
    num, den = {}, {}
    for name, p in unet.named_parameters():
        b, p0 = block_of(name), before[name].to(p.device)
        num[b] = num.get(b, 0.0) + float(((p - p0).float() ** 2).sum())
        den[b] = den.get(b, 0.0) + float((p0.float() ** 2).sum())
    return {b: (num[b] / den[b]) ** 0.5 if den[b] else 0.0 for b in num}


def mask_share(mask: dict[str, torch.Tensor]) -> dict[str, float]:
    """SalUn: the share of each block's weights its saliency mask lets move."""
    return {b: sum(int(m.sum()) for m in ms) / sum(m.numel() for m in ms)
            for b, ms in _by_block(mask.items()).items()}


def fisher_mass(fisher: list[torch.Tensor], names: list[str]) -> dict[str, float]:
    """SA: the share of the diagonal Fisher's total mass in each block (where the EWC penalty holds hardest)."""
    per = {b: sum(float(f.sum()) for f in fs) for b, fs in _by_block(zip(names, fisher)).items()}
    total = sum(per.values()) or 1.0
    return {b: v / total for b, v in per.items()}


class _Noised:
    """The base model's image of `prompt` (seed `seed`) noised to each timestep, and x̂0 of a UNet's prediction:
    x̂0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ (ε models) or √ᾱ x_t − √(1−ᾱ) v̂ (v models), decoded to images in [0,1]."""

    def __init__(self, base, prompt, seed, timesteps, steps, guidance_scale, cache_dir):
        self.base, device = base, pipeline_device(base)
        x0 = encode_images(base, cached_sample_pairs(base, [prompt], [seed], steps, guidance_scale, cache_dir))
        self.sched = training_scheduler(base)
        self.t = torch.tensor(list(timesteps), device=device)
        alphas = self.sched.alphas_cumprod.to(device)
        self.a = alphas[self.t].view(-1, 1, 1, 1)
        noise = torch.randn((len(self.t), *x0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(device)
        self.x_t = add_noise(alphas, x0, noise, self.t)

    def predict(self, pipe, prompt):
        pipe = getattr(pipe, "pipeline", pipe)  # an UnlearnResult or a pipeline
        return pipe.unet(self.x_t, self.t, encode_prompts(pipe, [prompt] * len(self.t))).sample

    def x0_hat(self, pred):
        a, x_t = self.a, self.x_t
        if self.sched.config.prediction_type == "v_prediction":
            return decode_latents(self.base, a.sqrt() * x_t - (1 - a).sqrt() * pred)
        return decode_latents(self.base, (x_t - (1 - a).sqrt() * pred) / a.sqrt())

    def noisy(self):
        return decode_latents(self.base, self.x_t)


@torch.no_grad()
def esd_panel(base, unlearned, prompt: str, seed: int = 0, timesteps=(250, 500, 750), etas=(0.5, 1.0, 2.0),
              steps: int = 20, guidance_scale: float = 2.0, cache_dir=None) -> tuple[dict, list[str]]:
    """ESD's quantities as predicted clean images x̂0, for the base model's image of `prompt` noised to each t.

    Returns ({row label: images [len(timesteps),3,H,W] in [0,1]}, column labels): x_t, the base's conditional and
    unconditional predictions, the negatively guided target ε_θ0(∅) − η(ε_θ0(c_f) − ε_θ0(∅)) for each η, and the
    unlearned model's prediction (`unlearned` None: left out).
    """
    n = _Noised(base, prompt, seed, timesteps, steps, guidance_scale, cache_dir)
    b_cond, b_null = n.predict(base, prompt), n.predict(base, "")
    rows = {"x_t": n.noisy(), "base, c_f": n.x0_hat(b_cond), "base, ∅": n.x0_hat(b_null)}
    for eta in etas:
        rows[f"ESD target η={eta:g}"] = n.x0_hat(esd_target(b_null, b_cond, eta))
    if unlearned is not None:
        rows["unlearned, c_f"] = n.x0_hat(n.predict(unlearned, prompt))
    return rows, [f"t={int(v)}" for v in n.t.tolist()]


@torch.no_grad()
def ovw_panel(base, unlearned, prompt: str, anchor: str, seed: int = 0, timesteps=(250, 500, 750),
              steps: int = 20, guidance_scale: float = 2.0, cache_dir=None) -> tuple[dict, list[str]]:
    """OVW's quantities as x̂0 images: the base on the forget prompt, OVW's target (the base on the anchor
    prompt, sg[ε_θ0(x_t, c_a)]), and the unlearned model on the forget prompt, which should match the target."""
    n = _Noised(base, prompt, seed, timesteps, steps, guidance_scale, cache_dir)
    rows = {"x_t": n.noisy(), f"base, c_f ({prompt})": n.x0_hat(n.predict(base, prompt)),
            f"target: base, c_a ({anchor})": n.x0_hat(n.predict(base, anchor)),
            "unlearned, c_f": n.x0_hat(n.predict(unlearned, prompt))}
    return rows, [f"t={int(v)}" for v in n.t.tolist()]


@torch.no_grad()
def ca_panel(base, unlearned, prompt: str, anchor: str, seed: int = 0, timesteps=(250, 500, 750),
             steps: int = 20, guidance_scale: float = 2.0, cache_dir=None) -> tuple[dict, list[str]]:
    """Concept Ablation's quantities as x̂0 images, on the base's image of the *anchor* prompt noised to each t:
    the base on the forget prompt, CA's target (the current model on the anchor prompt: the base at the first step,
    the unlearned model at the last) and the unlearned model on the forget prompt, which should match it."""
    n = _Noised(base, anchor, seed, timesteps, steps, guidance_scale, cache_dir)
    rows = {f"x_t (anchor image, {anchor})": n.noisy(), f"base, c_f ({prompt})": n.x0_hat(n.predict(base, prompt)),
            "target, first step: base, c_a": n.x0_hat(n.predict(base, anchor)),
            "target, last step: unlearned, c_a": n.x0_hat(n.predict(unlearned, anchor)),
            "unlearned, c_f": n.x0_hat(n.predict(unlearned, prompt))}
    return rows, [f"t={int(v)}" for v in n.t.tolist()]


@torch.no_grad()
def uce_kv_change(base, unlearned, task) -> dict[str, dict[str, float]]:
    """UCE's edit, per edited projection (attn2.to_k / to_v of each block): how far the erased tokens' outputs W c
    sit from their guide's W c* before the edit and W' c after (relative to ‖W c*‖), and how far the preserved
    (retain) tokens' outputs moved, ‖W' p − W p‖ / ‖W p‖. The tokens are the ones UCE erases (`methods.uce.token_rows`:
    the positions where a forget prompt differs from its anchor)."""
    from types import SimpleNamespace

    from ..methods.uce import token_rows

    pipe = getattr(unlearned, "pipeline", unlearned)
    prompts = SimpleNamespace(pipe=base, forget_prompts=task.forget_prompts, anchor_prompts=task.anchor_prompts,
                              e_f=encode_prompts(base, task.forget_prompts), e_a=encode_prompts(base, task.anchor_prompts))
    (c, c_star), p = token_rows(prompts, "concept"), encode_prompts(base, task.retain_train).flatten(0, 1)
    edited = dict(pipe.unet.named_parameters())
    out = {"erased token, base: ‖Wc − Wc*‖/‖Wc*‖": {}, "erased token, UCE: ‖W'c − Wc*‖/‖Wc*‖": {},
           "retain tokens: ‖W'p − Wp‖/‖Wp‖": {}}
    for name, w in base.unet.named_parameters():
        if ".attn2.to_k." not in name and ".attn2.to_v." not in name:
            continue
        w2 = edited[name].to(w.device)
        label = f"{_layer_label(name)} {name.split('.attn2.to_')[1][0]}"  # e.g. 'up 0.1 k'
        guide = c_star @ w.T
        out["erased token, base: ‖Wc − Wc*‖/‖Wc*‖"][label] = float((c @ w.T - guide).norm() / guide.norm())
        out["erased token, UCE: ‖W'c − Wc*‖/‖Wc*‖"][label] = float((c @ w2.T - guide).norm() / guide.norm())
        out["retain tokens: ‖W'p − Wp‖/‖Wp‖"][label] = float((p @ w2.T - p @ w.T).norm() / (p @ w.T).norm())
    return out


@torch.no_grad()
def attention_maps(pipes: dict, prompt: str, word: str, seed: int = 0, t: int = 500, steps: int = 20,
                   guidance_scale: float = 2.0, cache_dir=None) -> tuple[dict, list[str]]:
    """Forget-Me-Not's quantity: the attention each image position pays to `word`'s tokens in `prompt`, per
    cross-attention layer (mean over heads), on the first model's image of `prompt` noised to t. Returns
    ({label of each model: maps as images [layers,3,H,W] in [0,1]}, layer labels); every map is scaled by the
    largest value of its layer over all models, so brighter is more attention, comparable down a column."""
    from ..methods.fmn import AttentionMaps, concept_positions

    first = getattr(next(iter(pipes.values())), "pipeline", next(iter(pipes.values())))
    n = _Noised(first, prompt, seed, (t,), steps, guidance_scale, cache_dir)
    pos = concept_positions(first.tokenizer, [prompt], word, use_pooler=False, device=n.x_t.device)[0]
    per_model, names = {}, None
    for label, pipe in pipes.items():
        pipe = getattr(pipe, "pipeline", pipe)
        rec = AttentionMaps(pipe.unet, grad_only=False)
        try:
            n.predict(pipe, prompt)
            maps, names = rec.take(), rec.names
        finally:
            rec.remove()
        per_model[label] = [m[0].mean(0)[:, pos].sum(-1) for m in maps]  # [Q] per layer
    size = max(int(round(m.numel() ** 0.5)) for m in next(iter(per_model.values())))
    top = [max(float(v[i].max()) for v in per_model.values()) or 1.0 for i in range(len(names))]
    rows = {}
    for label, maps in per_model.items():
        imgs = []
        for i, m in enumerate(maps):
            side = int(round(m.numel() ** 0.5))
            img = (m / top[i]).reshape(1, 1, side, side)
            imgs.append(torch.nn.functional.interpolate(img, size=(size, size), mode="nearest")[0].expand(3, -1, -1))
        rows[label] = torch.stack(imgs).clamp(0, 1).cpu()
    return rows, [_layer_label(nm) for nm in names]


@torch.no_grad()
def snapshot_pipelines(base, result) -> dict:
    """{step: pipeline} of the model being unlearned: the base at step 0, the weights kept after each snapshot step
    (`run_method(..., snapshots=...)`) and the result at its last step."""
    import copy

    total = len(result.history) or result.config.steps
    pipes = {0: base}
    for k, weights in sorted(result.snapshots.items()):
        if 0 < k < total:
            unet = copy.deepcopy(base.unet)
            unet.load_state_dict({n: w.to(pipeline_device(base)) for n, w in weights.items()}, strict=False)
            pipes[k] = with_unet(base, unet.eval().requires_grad_(False))
    pipes[total] = result.pipeline
    return pipes


@torch.no_grad()
def snapshot_images(base, result, prompts, seed: int = 0, steps: int = 20, guidance_scale: float = 2.0,
                    cache_dir=None) -> tuple[dict, list[str]]:
    """The model being unlearned, sampled at the start, after each kept step (`run_method(..., snapshots=...)`)
    and at the end: ({prompt: images [S,3,H,W]}, column labels "0%", "25% (step 12)", ...), same seed throughout."""
    from ..sampling import sample

    pipes = snapshot_pipelines(base, result)
    total = max(pipes)  # the step the run ended at
    columns = {0: cached_sample_pairs(base, list(prompts), [seed] * len(prompts), steps, guidance_scale, cache_dir)}
    for k, pipe in pipes.items():
        if k > 0:
            columns[k] = sample(pipe, list(prompts), [seed], steps=steps, guidance_scale=guidance_scale, progress=False)
    labels = [f"{100 * k / total:.0f}% (step {k})" for k in columns]
    return {p: torch.stack([columns[k][i] for k in columns]) for i, p in enumerate(prompts)}, labels
