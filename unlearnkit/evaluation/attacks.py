"""Is an erased concept gone, or only hidden? A recovery attack with a learned word (beyond the paper).

`attack(pipe, task)` is textual inversion against the unlearned model (Pham et al. 2023, "Circumventing Concept
Erasure Methods for Text-to-Image Generative Models"): a new token's input embedding v* is learned with the
UNet and the text encoder frozen, so that the unlearned model denoises the *base* model's images of the forget
concept under prompts that use the token in the concept's place,

    v* = argmin_v  E_{x0 ~ base(c_f), t, ε} ‖target(x0, ε, t) − ε_θ(x_t, c_f[concept → v], t)‖²

then images of those prompts are judged (the concept classifier; CLIP zero-shot on Stable Diffusion). The
recovered forget rate is the share of them that show the concept again; the same attack on the base model
is the reference (what a learned word reaches when nothing was erased).
"""

from __future__ import annotations

import copy
import time

import torch

from .. import losses
from ..backbone import encode_images, pipeline_device, tokenize, training_scheduler
from ..data import DATA_SEED0, cached_sample_pairs
from .stats import format_ci

KINDS = ("embedding",)


def attack(pipe, task, kind: str = "embedding", steps: int = 100, base=None, lr: float = 5e-3, batch_size: int = 8,
           token: str = "<concept>", data_seeds: int = 2, data_steps: int = 20, seeds=(0,), sample_steps: int = 20,
           guidance_scale: float = 2.0, seed: int = 0, cache_dir=None, classifier=None, clip=None) -> dict:
    """Learn a word that brings `task.forget_concept` back in `pipe` (its UNet and text encoder stay frozen).

    `base` makes the reference images (default: `pipe` itself, the attack on the base model). Returns
    {'recovered_forget_rate', 'recovered_forget_rate_ci' (95% Wilson interval over images), 'forget_rate' (the same
    prompts with the concept's own word, no attack), 'attack_prompts', 'history' (loss per step), 'seconds'}.
    """
    from .stats import rate_ci
    from .judges import forget_hits
    from ..sampling import sample

    if kind not in KINDS:
        raise ValueError(f"unknown attack kind {kind!r}; known: {', '.join(KINDS)}")
    if not task.forget_concept:
        raise ValueError(f"task {task.name!r} has no forget_concept: the attack puts its token in that word's place")
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be > 0, got {steps} and {batch_size}")
    start = time.time()
    base = base or pipe
    device = pipeline_device(pipe)
    # the base model's images of the forget concept (the training-data seeds, cached)
    pairs = [(p, DATA_SEED0 + i * 1000 + j) for i, p in enumerate(task.forget_prompts) for j in range(data_seeds)]
    images = cached_sample_pairs(base, [p for p, _ in pairs], [s for _, s in pairs], data_steps, guidance_scale, cache_dir)
    attack_prompts = [task.swap(p, token) for p in task.forget_prompts]

    # a copy of the tokenizer and text encoder with one new word, its embedding the only trained tensor
    tokenizer, text_encoder = copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder).to(device)
    if token in tokenizer.get_vocab() or tokenizer.add_tokens([token]) != 1:
        raise ValueError(f"token {token!r} is already a word of the tokenizer; pick another")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its row is set just below
    table = text_encoder.get_input_embeddings().weight
    new_id = tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        table[new_id] = table[:new_id].mean(0)  # start from the average word
    text_encoder.requires_grad_(False)
    table.requires_grad_(True)
    attacked = type(pipe)(**{**pipe.components, "tokenizer": tokenizer, "text_encoder": text_encoder})
    optimizer = torch.optim.Adam([table], lr=lr)
    keep = torch.ones(len(table), 1, device=device)
    keep[new_id] = 0  # rows whose gradient is zeroed: every word but the new one

    sched = training_scheduler(pipe)
    alphas = sched.alphas_cumprod.to(device)
    prediction_type = losses.check_prediction_type(sched.config.prediction_type)
    with torch.no_grad():
        x0_all = encode_images(pipe, images)
    ids_all = tokenize(tokenizer, [attack_prompts[i // data_seeds] for i in range(len(pairs))], device)
    gen = torch.Generator("cpu").manual_seed(seed)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, len(x0_all), (batch_size,), generator=gen)
        noise = torch.randn((batch_size, *x0_all.shape[1:]), generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        x0 = x0_all[idx]
        x_t = losses.add_noise(alphas, x0, noise, t)
        pred = pipe.unet(x_t, t, text_encoder(ids_all[idx])[0]).sample
        loss = losses.simple_loss(pred, losses.regression_target(prediction_type, alphas, x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        table.grad.mul_(keep)
        optimizer.step()
        history.append(loss.item())
    table.requires_grad_(False)

    # judge: the token's prompts against the concept's own word, same seeds
    shown = forget_hits(sample(attacked, attack_prompts, list(seeds), steps=sample_steps,
                               guidance_scale=guidance_scale), task, classifier, clip)
    plain = forget_hits(sample(pipe, task.forget_prompts, list(seeds), steps=sample_steps,
                               guidance_scale=guidance_scale), task, classifier, clip)
    (recovered, recovered_ci), (rate, ci) = rate_ci(shown), rate_ci(plain)
    return {"recovered_forget_rate": recovered, "recovered_forget_rate_ci": recovered_ci,
            "forget_rate": rate, "forget_rate_ci": ci, "attack_prompts": attack_prompts,
            "token": token, "steps": steps, "history": history, "seconds": time.time() - start}


def attack_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table: one line per (task, method): forget rate without and with the learned word [95% CI]."""
    lines = ["| task | model | forget rate (no attack) | recovered forget rate [95% CI] |", "|---|---|---|---|"]
    for task, per in results.items():
        for label, r in per.items():
            recovered = format_ci(r["recovered_forget_rate"], r["recovered_forget_rate_ci"], digits=2)
            lines.append(f"| {task} | {label} | {r['forget_rate']:.2f} | {recovered} |")
    return "\n".join(lines)
