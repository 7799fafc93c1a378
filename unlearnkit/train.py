"""The one unlearning loop every method plugs into (`unlearnkit.unlearn`).

The base pipeline is never modified: the UNet being unlearned is a copy, the frozen base UNet
computes the targets (its passes batched: conditional and unconditional in one forward). Text
embeddings and the UNet-space images of the forget / retain / anchor data are computed once.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import losses, world
from .data import pipeline_fingerprint, training_data
from .io import atomic_save, load_checkpoint
from .methods import canonical, make_config
from .models import check_prediction_type, encode_images, encode_prompts, training_scheduler


@dataclass
class UnlearnResult:
    pipeline: object  # the unlearned pipeline (shares the frozen text encoder / VAE with the base)
    history: list[dict] = field(default_factory=list)  # one dict per step: loss terms and method state
    method: str = ""
    config: object = None
    seconds: float = 0.0  # wall time of the training loop (data generation, masks and Fisher excluded)


def select_params(unet, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs that train: 'full', 'xattn' (attn2 only, ESD-x) or 'non-xattn' (ESD-u)."""
    named = list(unet.named_parameters())
    if which == "full":
        return named
    if which == "xattn":
        return [(n, p) for n, p in named if "attn2" in n]
    if which == "non-xattn":
        return [(n, p) for n, p in named if "attn2" not in n]
    raise ValueError(f"unknown params {which!r}; choose full, xattn or non-xattn")


def _relabel(prompt: str, task, rng: random.Random) -> str:
    # SalUn's c_rand: the forget concept swapped for another concept of its kind (world tasks), else a retain prompt
    if task.kind and task.forget_concept in world.KINDS.get(task.kind, ()):
        other = rng.choice([w for w in world.KINDS[task.kind] if w != task.forget_concept])
        return world.prompt(**{**world.parse(prompt), task.kind: other})
    return rng.choice(task.retain_prompts)


def regression_target(prediction_type: str, alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses at x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε: ε ('epsilon', SD 1.x) or
    v = √ᾱ_t ε − √(1−ᾱ_t) x0 ('v_prediction', SD 2.x and the embedded base; Salimans & Ho 2022)."""
    if check_prediction_type(prediction_type) == "epsilon":
        return noise
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


class _Batches:
    """Random mini-batch indices into one data set, with noise and timesteps, all from one generator."""

    def __init__(self, latents, gen):
        self.latents, self.gen = latents, gen

    def draw(self, n, num_timesteps):
        idx = torch.randint(0, len(self.latents), (n,), generator=self.gen)
        noise = torch.randn((n, *self.latents.shape[1:]), generator=self.gen)
        timesteps = torch.randint(0, num_timesteps, (n,), generator=self.gen)
        return idx, noise, timesteps


class _Fused:
    """UNet inputs (x_t, t, embeddings) queued during a step and run as one batch; `add` returns the index
    of that input's output in `run()`'s list."""

    def __init__(self, fn):
        self.fn, self.parts = fn, []

    def add(self, x, t, e) -> int:
        self.parts.append((x, t, e))
        return len(self.parts) - 1

    def run(self) -> list[torch.Tensor]:
        if not self.parts:
            return []
        x, t, e = (torch.cat(z) for z in zip(*self.parts))
        return list(self.fn(x, t, e).split([len(p[0]) for p in self.parts]))


def unlearn(pipe, task, method: str = "esd-x", out_dir: str | Path | None = None, cache_dir=None,
            progress: bool = True, **overrides) -> UnlearnResult:
    """Unlearn `task.forget_prompts` from `pipe` with `method`; returns an UnlearnResult (the base is untouched).

    With `out_dir`, checkpoints (weights, optimiser, RNG, method state, config, seed) are written there
    atomically, and a run started again with the same arguments resumes from the last one.
    """
    name = canonical(method)
    cfg = make_config(name, **overrides)
    mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    device = accelerator.device
    pipe.to(device)
    for module in (pipe.unet, pipe.text_encoder):
        module.requires_grad_(False)
    noise_scheduler = training_scheduler(pipe)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    alphas = noise_scheduler.alphas_cumprod.to(device)

    def add_noise(x0, noise, t):
        a = alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    prediction_type = check_prediction_type(noise_scheduler.config.prediction_type)  # fail before the data is made

    def diffusion_target(x0, noise, t):
        return regression_target(prediction_type, alphas, x0, noise, t)

    # the data: base images -> UNet space, prompts -> embeddings, once
    fp = pipeline_fingerprint(pipe)
    data = training_data(pipe, task, cfg, cache_dir=cache_dir, fingerprint=fp, progress=progress)
    rng = random.Random(cfg.seed)
    with torch.no_grad():
        f_prompts, f_images = data["forget"]
        r_prompts, r_images = data["retain"]
        x_f, x_r = encode_images(pipe, f_images), encode_images(pipe, r_images)
        e_f, e_r = encode_prompts(pipe, f_prompts), encode_prompts(pipe, r_prompts)
        e_null = encode_prompts(pipe, [""])
        if "anchor" in data:
            a_prompts, a_images = data["anchor"]
            x_a, e_a = encode_images(pipe, a_images), encode_prompts(pipe, a_prompts)
        elif name in ("sa", "ovw", "ovw-nohelp"):
            raise ValueError(f"method {name!r} needs task.anchor_prompts (one per forget prompt); add them to the task")
        if name == "salun":
            e_rand = encode_prompts(pipe, [_relabel(p, task, rng) for p in f_prompts])
    gen = torch.Generator("cpu").manual_seed(cfg.seed + accelerator.process_index)
    forget, retain = _Batches(x_f, gen), _Batches(x_r, gen)

    # the model being unlearned: a copy of the base UNet; the base stays frozen for targets
    base_unet = pipe.unet.eval()
    unet = copy.deepcopy(base_unet).train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = select_params(unet, cfg.params)
    for _, p in trainable:
        p.requires_grad_(True)
    params = [p for _, p in trainable]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type == "cuda")  # fused: one kernel per step on CUDA
    unet, optimizer = accelerator.prepare(unet, optimizer)
    raw_unet = accelerator.unwrap_model(unet)

    def base(x, t, e):
        with torch.no_grad(), accelerator.autocast():
            return base_unet(x, t, e).sample.float()

    def model(x, t, e):
        with accelerator.autocast():
            return unet(x, t, e).sample.float()

    def draw_noisy(batches, x0, n):
        # (indices, the noise ε, timesteps, x_t, the regression target of x_t)
        idx, noise, t = batches.draw(n, num_timesteps)
        noise, t = noise.to(device), t.to(device)
        return idx, noise, t, add_noise(x0[idx], noise, t), diffusion_target(x0[idx], noise, t)

    def forget_loss_base():
        # the base model's L_F on forget data, under a fixed generator (Saddle's τ is a multiple of it)
        g = torch.Generator("cpu").manual_seed(cfg.seed + 10_000)
        vals, batches = [], _Batches(x_f, g)
        for _ in range(8):
            idx, noise, t = batches.draw(cfg.batch_size, num_timesteps)
            noise, t = noise.to(device), t.to(device)
            vals.append(losses.simple_loss(base(add_noise(x_f[idx], noise, t), t, e_f[idx]),
                                           diffusion_target(x_f[idx], noise, t)).item())
        return sum(vals) / len(vals)

    # method state computed once: SalUn's mask, SA's Fisher, Saddle's τ
    state = {}
    if name == "salun":
        grads = {n: torch.zeros_like(p) for n, p in trainable}
        for _ in range(cfg.mask_batches):
            idx, noise, t, x_t, y = draw_noisy(forget, x_f, cfg.batch_size)
            g = torch.autograd.grad(losses.simple_loss(model(x_t, t, e_f[idx]), y), params)
            for (n, _), gi in zip(trainable, g):
                grads[n] += gi.detach()
        mask = losses.saliency_mask(grads, cfg.mask_ratio)
        state["masks"] = [mask[n].to(p.dtype) for n, p in trainable]
    if name == "sa":
        from .fisher import diagonal_fisher

        state["fisher"] = diagonal_fisher(raw_unet, trainable, x_r, e_r, add_noise, num_timesteps, cfg, fp, cache_dir,
                                         target=diffusion_target)
        state["theta0"] = [p.detach().clone() for p in params]
    if name == "saddle":
        state["tau"] = cfg.tau_mult * forget_loss_base()
        state["mu"] = cfg.mu_init

    # resume from the last checkpoint in out_dir
    step, history = 0, []
    ckpt_path = Path(out_dir) / "checkpoint.pt" if out_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, expect="unlearn")
        if ckpt["method"] != name or ckpt["config"] != asdict(cfg) or ckpt["base"] != fp:
            raise ValueError(f"{ckpt_path} belongs to another run (method {ckpt['method']!r}, config "
                             f"{ckpt['config']}); pass a new out_dir or the same method, options and base model")
        raw_unet.load_state_dict(ckpt["unet"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        step, history, state["mu"] = ckpt["step"], ckpt["history"], ckpt.get("mu")

    def save_checkpoint():
        atomic_save({"kind": "unlearn", "method": name, "config": asdict(cfg), "seed": cfg.seed, "base": fp,
                     "step": step, "history": history, "unet": raw_unet.state_dict(),
                     "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "mu": state.get("mu")},
                    ckpt_path)

    start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=name)
    n = cfg.batch_size
    while step < cfg.steps:
        for _ in range(cfg.grad_accum):
            with accelerator.accumulate(unet):
                log = {}
                # every UNet input of the step is queued, then run as one batched pass of the trained UNet and
                # one of the frozen base (rows are independent: the same outputs as separate calls, fewer calls)
                train_in, frozen_in = _Fused(model), _Fused(base)
                if cfg.help_weight:  # L_help: distillation to the base on retain data, conditional and unconditional
                    hidx, _, ht, hx_t, _ = draw_noisy(retain, x_r, n)
                    help_in = [(hx_t, ht, e_r[hidx]), (hx_t, ht, e_null.expand(n, -1, -1))]
                    help_pred = [train_in.add(*a) for a in help_in]
                    help_base = [frozen_in.add(*a) for a in help_in]

                # the method's forgetting term
                idx, noise, t, x_t, y = draw_noisy(forget, x_f, n)
                if name == "ga":
                    f_pred = train_in.add(x_t, t, e_f[idx])
                    if cfg.alpha:
                        ridx, _, rt, rx_t, ry = draw_noisy(retain, x_r, n)
                        r_pred = train_in.add(rx_t, rt, e_r[ridx])
                elif name in ("esd-x", "esd-u"):
                    if cfg.x_t == "sample":
                        from .sampling import partial_sample

                        x_t, t = partial_sample(raw_unet, pipe, e_f[idx], e_null, noise, t)
                    f_pred = train_in.add(x_t, t, e_f[idx])
                    b_cond, b_uncond = frozen_in.add(x_t, t, e_f[idx]), frozen_in.add(x_t, t, e_null.expand(n, -1, -1))
                elif name == "salun":
                    with torch.no_grad(), accelerator.autocast():
                        random_target = unet(x_t, t, e_rand[idx]).sample.float()
                    ridx, _, rt, rx_t, ry = draw_noisy(retain, x_r, n)
                    f_pred, r_pred = train_in.add(x_t, t, e_f[idx]), train_in.add(rx_t, rt, e_r[ridx])
                elif name == "sa":
                    # surrogate: the anchor image x_a under the forget prompt c_f
                    ridx, _, rt, rx_t, ry = draw_noisy(retain, x_r, n)
                    f_pred = train_in.add(add_noise(x_a[idx], noise, t), t, e_f[idx])
                    r_pred = train_in.add(rx_t, rt, e_r[ridx])
                elif name == "saddle":
                    f_pred = train_in.add(x_t, t, e_f[idx])
                else:  # ovw, ovw-nohelp: overwrite with the base's prediction for the anchor prompt
                    if cfg.x_t == "anchor" or (cfg.x_t == "both" and step % 2):
                        x_t = add_noise(x_a[idx], noise, t)
                    f_pred, a_base = train_in.add(x_t, t, e_f[idx]), frozen_in.add(x_t, t, e_a[idx])
                out, frozen = train_in.run(), frozen_in.run()

                help_l = None
                if cfg.help_weight:
                    help_l = losses.help_loss(out[help_pred[0]], frozen[help_base[0]], out[help_pred[1]],
                                              frozen[help_base[1]], cfg.help_uncond_weight)
                    log["help"] = help_l.item()
                if name == "ga":
                    loss = losses.ga_loss(out[f_pred], y)
                    if cfg.alpha:
                        loss = loss + cfg.alpha * losses.simple_loss(out[r_pred], ry)
                elif name in ("esd-x", "esd-u"):
                    target = losses.esd_target(frozen[b_uncond], frozen[b_cond], cfg.eta)
                    loss = losses.regression_loss(out[f_pred], target)
                elif name == "salun":
                    loss = losses.salun_loss(out[f_pred], random_target, out[r_pred], ry, cfg.alpha)
                elif name == "sa":
                    penalty = losses.ewc_penalty(params, state["theta0"], state["fisher"])
                    loss = losses.sa_loss(out[f_pred], diffusion_target(x_a[idx], noise, t), out[r_pred], ry,
                                          penalty, cfg.gamma, cfg.lam)
                    log["ewc"] = penalty.item()
                elif name == "saddle":
                    forget_l = losses.simple_loss(out[f_pred], y)
                    help_term = help_l if help_l is not None else torch.zeros((), device=device)
                    loss = losses.saddle_lagrangian(help_term, forget_l, state["mu"], state["tau"], cfg.help_weight)
                    log["forget_loss"] = forget_l.item()
                else:
                    loss = losses.regression_loss(out[f_pred], frozen[a_base])
                if help_l is not None and name != "saddle":
                    loss = loss + cfg.help_weight * help_l

                # backward, mask (SalUn), clip, step
                if not torch.isfinite(loss):
                    where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path and ckpt_path.exists() else ""
                    raise FloatingPointError(f"{name}: loss became {loss.item()} at step {step}{where}; lower lr "
                                             f"(now {cfg.lr}) or raise max_grad_norm clipping")
                accelerator.backward(loss)
                if name == "salun":
                    for p, m in zip(params, state["masks"]):
                        if p.grad is not None:
                            p.grad.mul_(m)
                if cfg.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        # method state after the step: Saddle's projected ascent on μ
        if name == "saddle":
            log["mu"] = state["mu"]
            state["mu"] = losses.saddle_dual_step(state["mu"], state["tau"], log["forget_loss"], cfg.mu_lr)
            log["tau"] = state["tau"]
        log["loss"] = loss.item()
        history.append({"step": step, **log})
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{log['loss']:.4f}")
        if ckpt_path and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps):
            save_checkpoint()
    bar.close()

    # the unlearned pipeline: the base's parts with the new UNet
    raw_unet.eval().requires_grad_(False)
    unlearned = type(pipe)(**{**pipe.components, "unet": raw_unet})
    unlearned.set_progress_bar_config(disable=True)
    return UnlearnResult(pipeline=unlearned, history=history, method=name, config=cfg,
                         seconds=time.time() - start)
