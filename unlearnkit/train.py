"""The one unlearning loop every method plugs into (`unlearnkit.unlearn`).

The loop owns the data, the two UNets, the optimiser and the checkpoints; a method (`unlearnkit.methods`)
owns its loss. Each step: the method queues UNet inputs, the loop runs them as one pass of the trained UNet
and one of the frozen base, adds L_help when `help_weight` > 0, and takes an optimiser step. The caller's
pipeline is never modified and stays on its device.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from . import losses
from .backbone import encode_images, encode_prompts, pipeline_device, training_scheduler
from .context import StepContext
from .data import pipeline_fingerprint, training_data
from .io import atomic_save, load_checkpoint
from .methods import LORA_TARGETS, canonical, make_method
from .models import resolve_device


@dataclass
class UnlearnResult:
    pipeline: object  # the unlearned pipeline (shares the frozen text encoder / VAE with the base)
    history: list[dict] = field(default_factory=list)  # one dict per step: loss terms and method state (floats)
    method: str = ""
    config: object = None
    seconds: float = 0.0  # wall time of the training loop (data generation, masks and Fisher excluded)
    state: dict = field(default_factory=dict)  # what the method computed: SalUn's mask, SA's Fisher, Saddle's τ, μ
    lora: dict | None = None  # params="lora": the adapter's weights (peft's state dict); `pipeline` has them fused
    lora_config: object = None  # params="lora": its peft LoraConfig
    snapshots: dict = field(default_factory=dict)  # {step: {name: weight}} (run_method's `quantities.Snapshots`)

    @property
    def forget_checks(self) -> dict[int, float]:
        """`until_forgotten`'s checks, {steps done: forget rate on the held-out seeds}; {} when it was off."""
        return {h["step"] + 1: h["forget_check"] for h in self.history if "forget_check" in h}

    @property
    def stopped_forgotten(self) -> bool:
        """Whether `until_forgotten` stopped the run: its last check was <= CHECK_BELOW."""
        return _stopped_forgotten(self.history)


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")  # torch.compile's modes
# the seeds of `until_forgotten`'s check: held out from the training data (seeds 0 .. data_seeds-1) and from every
# profile's evaluation (0 .. 3), so the run that stops is judged afterwards on images its check never saw. Two: on
# one held-out seed, OVW on yellow after 100 steps scored 0.03 while the evaluation's seed still saw 0.30 (2026-11-30)
CHECK_SEEDS = (1000, 1001)
# the check's bound: half the evaluation's (metrics.FORGOT_BELOW = 0.2). A check is a sample of 50-60 images, the
# evaluation another: stopped at the first check <= 0.2, ESD on *cross* checked 0.18 and evaluated 0.32 (2026-11-30)
CHECK_BELOW = 0.1


def lora_config(cfg):
    """The peft LoraConfig of a params="lora" run: rank r, alpha r, on the attention projections `lora_targets`."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules=LORA_TARGETS[cfg.lora_targets])


def select_params(unet, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs that train: 'full', 'xattn' (attn2 only, ESD-x), 'non-xattn' (ESD-u) or 'lora'
    (the adapters' weights; the UNet must have them)."""
    named = list(unet.named_parameters())
    if which == "lora":
        return [(n, p) for n, p in named if "lora_" in n]
    if which == "full":
        return named
    if which == "xattn":
        return [(n, p) for n, p in named if "attn2" in n]
    if which == "non-xattn":
        return [(n, p) for n, p in named if "attn2" not in n]
    raise ValueError(f"unknown params {which!r}; choose full, xattn, non-xattn or lora")


def _on(pipe, device: torch.device):
    # the caller's pipeline stays where it is: on another device, train on a copy of its modules
    here = pipeline_device(pipe)
    if (here.type, here.index or 0) == (device.type, device.index or 0):
        return pipe
    parts = {k: copy.deepcopy(v).to(device) if isinstance(v, torch.nn.Module) else v for k, v in pipe.components.items()}
    return type(pipe)(**parts)


@torch.no_grad()
def forget_rate_now(unet, pipe, task, cfg, classifier) -> float:
    """`until_forgotten`'s check: the share of `task.forget_prompts` × CHECK_SEEDS in which `classifier` still sees
    the concept, sampled from `pipe` with `unet` (data_steps DDIM steps, guidance data_guidance)."""
    from .metrics import forget_hits
    from .sampling import sample

    was_training = unet.training
    probe = type(pipe)(**{**pipe.components, "unet": unet.eval()})
    probe.set_progress_bar_config(disable=True)
    images = sample(probe, task.forget_prompts, seeds=CHECK_SEEDS, steps=cfg.data_steps,
                    guidance_scale=cfg.data_guidance, progress=False)
    unet.train(was_training)
    hits = forget_hits(images, task, classifier=classifier)
    return sum(hits) / len(hits)


def _stopped_forgotten(history: list[dict]) -> bool:
    # until_forgotten's verdict: the last step had a check, and it said forgotten
    return bool(history) and history[-1].get("forget_check", 1.0) <= CHECK_BELOW


def _flush(pending: list[dict], history: list[dict]) -> None:
    # read the logged tensors of several steps with one host-device sync
    tensors = [v.detach().double().reshape(()) for h in pending for v in h.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack(tensors).tolist() if tensors else [])
    for h in pending:
        history.append({k: next(values) if isinstance(v, torch.Tensor) else v for k, v in h.items()})
    pending.clear()


def unlearn(pipe, task, method: str, out_dir: str | Path | None = None, cache_dir=None,
            progress: bool = True, device=None, callback=None, compile: str | None = None, data_from=None,
            **overrides) -> UnlearnResult:
    """Unlearn `task.forget_prompts` from `pipe` with `method`; returns an UnlearnResult (the base is untouched).

    Trains on `device` (default: where `pipe` is). With `out_dir`, checkpoints (weights, optimiser, RNG, method
    state, config, seed) are written there atomically, and the same call again resumes from the last one.
    `callback(step, unet)`, when given, is called before the first step (step 0) and after every step with the
    number of steps done and the UNet being trained (read it, do not change it: e.g. keep snapshots).
    `compile` runs the UNet passes through `torch.compile` with that mode: 'default', 'reduce-overhead' (CUDA
    graphs: for GPUs, where a step is bound by kernel launches) or 'max-autotune'; the first steps pay for it.
    `data_from`: the pipeline whose images are the training data (default `pipe`; e.g. the original model of a
    sequence of erasures, `unlearn_sequence(data="original")`).
    With `until_forgotten=N` (a config field) the loop checks every N steps whether the concept is gone (the forget
    prompts on held-out seeds, judged by the concept classifier) and stops once it is; `result.forget_checks` lists
    the checks, `len(result.history)` the steps it took.
    """
    name = canonical(method)
    if compile not in COMPILE_MODES:
        raise ValueError(f"unknown compile {compile!r}; choose None or one of: {', '.join(map(str, COMPILE_MODES[1:]))}")
    method = make_method(name, **overrides)
    cfg = method.config
    if method.needs_anchors and not task.anchor_prompts:
        raise ValueError(f"method {name!r} needs task.anchor_prompts (one per forget prompt); add them to the task")
    classifier = None
    if cfg.until_forgotten:
        from .classifier import load_classifier
        from .metrics import classifier_judges

        if not classifier_judges(task):
            raise ValueError(f"until_forgotten={cfg.until_forgotten}: task {task.name!r} forgets "
                             f"{task.forget_concept!r}, which the embedded world's classifier cannot judge; pass "
                             "until_forgotten=0 and choose `steps` (evaluate(..., clip=...) judges it afterwards)")
        classifier = load_classifier()
    want = resolve_device(device) if device is not None else pipeline_device(pipe)
    mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if want.type == "cuda" else "no")
    accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=want.type == "cpu")
    device = accelerator.device
    pipe = _on(pipe, device)
    for module in (pipe.unet, pipe.text_encoder):
        module.requires_grad_(False)
    noise_scheduler = training_scheduler(pipe)
    prediction_type = losses.check_prediction_type(noise_scheduler.config.prediction_type)  # before the data

    # the data: base images -> UNet space, prompts -> embeddings, once
    fp = pipeline_fingerprint(pipe)
    if data_from is not None and data_from.unet.config.sample_size != pipe.unet.config.sample_size:
        raise ValueError("data_from must be a pipeline of the same model (same image size) as pipe, e.g. the original "
                         "one a sequence of erasures started from; pass data_from=None to train on pipe's own images")
    source, data_fp = (pipe, fp) if data_from is None else (_on(data_from, device), pipeline_fingerprint(data_from))
    data = training_data(source, task, cfg, cache_dir=cache_dir, fingerprint=data_fp, progress=progress)
    with torch.no_grad():
        data = {k: (prompts, encode_images(pipe, images), encode_prompts(pipe, prompts))
                for k, (prompts, images) in data.items()}
    gen = torch.Generator("cpu").manual_seed(cfg.seed + accelerator.process_index)

    # the model being unlearned: a copy of the base UNet; the base stays frozen for targets
    base_unet = pipe.unet.eval()
    unet = copy.deepcopy(base_unet).train()
    if cfg.params == "lora":  # adapters on a copy; the frozen base's passes run it with the adapters off
        unet.add_adapter(lora_config(cfg))
        base_unet = None
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = select_params(unet, cfg.params)
    params = [p.requires_grad_(True) for _, p in trainable]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type == "cuda")  # fused: one kernel per step on CUDA
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ctx = StepContext(pipe, task, cfg, accelerator, unet, base_unet, trainable, data, gen,
                      noise_scheduler.config.num_train_timesteps, noise_scheduler.alphas_cumprod.to(device),
                      prediction_type, fp, cache_dir, compile=compile)
    method.prepare(ctx)

    # resume from the last checkpoint in out_dir
    step, history, pending = 0, [], []
    ckpt_path = Path(out_dir) / "checkpoint.pt" if out_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, expect="unlearn")
        if (ckpt["method"] != name or ckpt["config"] != asdict(cfg) or ckpt["base"] != fp
                or ckpt.get("data", fp) != data_fp):
            raise ValueError(f"{ckpt_path} belongs to another run (method {ckpt['method']!r}, config "
                             f"{ckpt['config']}); pass a new out_dir or the same method, options and base model")
        ctx.raw_unet.load_state_dict(ckpt["unet"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generators = ckpt["generator"] if isinstance(ckpt["generator"], list) else [ckpt["generator"]]
        if len(generators) != accelerator.num_processes:
            raise ValueError(f"{ckpt_path} was written by {len(generators)} process(es), this run has "
                             f"{accelerator.num_processes}; resume with as many, or pass a new out_dir")
        gen.set_state(generators[accelerator.process_index])
        step, history = ckpt["step"], ckpt["history"]
        method.state.update(ckpt["method_state"])
    # until_forgotten: the last check said forgotten (a resumed run that stopped stays stopped)
    forgotten = bool(cfg.until_forgotten) and _stopped_forgotten(history)

    start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=name)
    sync_every = 1 if device.type == "cpu" else 25  # host-device syncs to read the logged losses
    if callback is not None and step == 0:
        callback(0, ctx.raw_unet)
    while step < cfg.steps and not forgotten:
        ctx.step = step
        for _ in range(cfg.grad_accum):
            with accelerator.accumulate(unet):
                # queue the step's UNet inputs: L_help's (retain data, conditional and unconditional), the method's
                ctx.new_step()
                if cfg.help_weight:
                    h = ctx.draw("retain")
                    help_in = [(h.x_t, h.t, ctx.e_r[h.idx]), (h.x_t, h.t, ctx.null(len(h.idx)))]
                    help_pred, help_base = [ctx.train(*a) for a in help_in], [ctx.frozen(*a) for a in help_in]
                loss_fn = method.step(ctx, ctx.draw("forget"))

                # one pass of the trained UNet, one of the frozen base; then the losses
                out, log = ctx.run(), {}
                if cfg.help_weight:
                    out.help = losses.help_loss(out[help_pred[0]], out[help_base[0]], out[help_pred[1]],
                                                out[help_base[1]], cfg.help_uncond_weight)
                    log["help"] = out.help
                loss = loss_fn(out)
                if isinstance(loss, tuple):
                    loss, terms = loss
                    log.update(terms)
                if out.help is not None and method.adds_help:
                    loss = loss + cfg.help_weight * out.help

                # backward, the method's gradient mask, clip, step
                accelerator.backward(loss)
                method.mask_gradients(params)
                if cfg.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        method.after_step(log)
        pending.append({"step": step, **log, "loss": loss.detach()})
        step += 1
        bar.update(1)
        if callback is not None:
            callback(step, ctx.raw_unet)
        if cfg.until_forgotten and (step % cfg.until_forgotten == 0 or step == cfg.steps):
            _flush(pending, history)
            history[-1]["forget_check"] = forget_rate_now(ctx.raw_unet, pipe, task, cfg, classifier)
            forgotten = _stopped_forgotten(history)
            bar.set_postfix(forget_check=f"{history[-1]['forget_check']:.2f}")

        # read the logs, stop on a non-finite loss, checkpoint
        save = ckpt_path and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps
                              or forgotten)
        if save or step % sync_every == 0 or step == cfg.steps:
            _flush(pending, history)
            bad = next((h for h in history[-sync_every:] if not torch.isfinite(torch.tensor(h["loss"]))), None)
            if bad is not None:
                where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path and ckpt_path.exists() else ""
                raise FloatingPointError(f"{name}: loss became {bad['loss']} at step {bad['step']}{where}; lower lr "
                                         f"(now {cfg.lr}) or raise max_grad_norm clipping")
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if save:  # once, by the main process, with every process's generator
            generators = gather_object([gen.get_state()]) if accelerator.num_processes > 1 else [gen.get_state()]
            if accelerator.is_main_process:
                atomic_save({"kind": "unlearn", "method": name, "config": asdict(cfg), "seed": cfg.seed, "base": fp,
                             "data": data_fp, "step": step, "history": history, "unet": ctx.raw_unet.state_dict(),
                             "optimizer": optimizer.state_dict(), "generator": generators,
                             "method_state": {k: method.state[k] for k in method.resume_keys}}, ckpt_path)
            accelerator.wait_for_everyone()
    bar.close()

    # the unlearned pipeline: the base's parts with the new UNet (LoRA fused into its weights, the adapter kept apart)
    seconds, raw_unet, lora = time.time() - start, ctx.raw_unet.eval().requires_grad_(False), None
    if cfg.params == "lora":
        from peft import get_peft_model_state_dict

        lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(raw_unet).items()}
        raw_unet.fuse_lora()
        raw_unet.unload_lora()
    unlearned = type(pipe)(**{**pipe.components, "unet": raw_unet})
    unlearned.set_progress_bar_config(disable=True)
    return UnlearnResult(pipeline=unlearned, history=history, method=name, config=cfg, seconds=seconds,
                         state=method.state, lora=lora, lora_config=lora_config(cfg) if lora is not None else None)
