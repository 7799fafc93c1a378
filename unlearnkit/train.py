"""The one unlearning loop every method plugs into (`unlearnkit.unlearn`).

The loop owns the data, the UNets, the optimiser and the checkpoints; a method (`unlearnkit.methods`) owns its
loss. Each step: the method queues UNet passes, the loop runs them (one batched pass per model), adds L_help when
`help_weight` > 0, and takes an optimiser step. It trains and nothing else: a stopping rule (`stop`) and a
`callback` are handed to it. The caller's pipeline is never modified and stays on its device.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from . import losses
from .backbone import encode_images, encode_prompts, pipeline_device, training_scheduler, with_unet
from .context import StepContext
from .data import pipeline_fingerprint, training_data
from .io import atomic_save, load_checkpoint
from .methods import Method, canonical, make_method
from .models import resolve_device
from .run import (COMPILE_MODES, RUN_OPTIONS, RunOptions, Snapshots, UnlearnResult, _stopped, lora_config,  # noqa: F401
                  run_identity, select_params, split_settings)

HELP_SEED_OFFSET = 40_000  # L_help's retain draws: a generator of their own, seeded cfg.seed + this


def unlearn(pipe, task, method: str, out_dir: str | Path | None = None, cache_dir=None, progress: bool | None = None,
            device=None, callback=None, compile: str | None = None, data_from=None, stop=None,
            options: RunOptions | None = None, **overrides) -> UnlearnResult:
    """Unlearn `task.forget_prompts` from `pipe` with `method`; returns an UnlearnResult (the base is untouched).

    `overrides` are fields of the method's config (what it learns) or of `RunOptions` (how it runs: device,
    mixed_precision, gradient_checkpointing, compile, checkpoint_every, progress; also `options=`).
    With `out_dir`, checkpoints (weights, optimiser, RNG, method state, the run's identity) are written there
    atomically, and the same call again resumes from the last one (under any run options).
    `callback(step, unet)`, when given, is called before the first step (step 0) and after every step with the
    number of steps done and the UNet being trained (read it, do not change it: e.g. `Snapshots`).
    `stop`: a stopping rule, e.g. `unlearnkit.until_forgotten(50)`: every `stop.every` steps the loop calls
    `stop(pipeline, task, config) -> (log, done)` with the current model and ends the run when `done`.
    `data_from`: the pipeline whose images are the training data (default `pipe`; e.g. the original model of a
    sequence of erasures, `unlearn_sequence(data="original")`).
    """
    overrides, run_kw = split_settings(overrides)
    given = {k: v for k, v in dict(device=device, compile=compile, progress=progress).items() if v is not None}
    options = replace(options or RunOptions(), **run_kw, **given)
    name = canonical(method)
    return train(pipe, task, name, make_method(name, **overrides), options, out_dir=out_dir, cache_dir=cache_dir,
                 callback=callback, stop=stop, data_from=data_from)


def train(pipe, task, name: str, method: Method, options: RunOptions, out_dir=None, cache_dir=None, callback=None,
          stop=None, data_from=None) -> UnlearnResult:
    """The loop: `method` (a `Method` with its config, registered as `name`) on `task`, run under `options`.
    `unlearn` builds its arguments; `run_method` builds them once and calls this."""
    cfg = method.config
    task = task.training_view()  # a method sees the training part of the retain prompts only, never the held-out
    _check_inputs(name, method, task, stop, data_from, pipe)
    ctx, optimizer, generators = _context(pipe, task, method, options, cache_dir, data_from)
    pipe = ctx.pipe
    identity = run_identity(name, cfg, ctx.fingerprint, ctx.data_fingerprint, stop)
    ckpt_path = Path(out_dir) / "checkpoint.pt" if out_dir else None
    step, history = _resume(ckpt_path, identity, ctx, optimizer, generators, method)
    pending, start, done = [], time.time(), _stopped(history)
    bar = tqdm(total=cfg.steps, initial=step, disable=not options.progress, desc=name)
    sync_every = 1 if ctx.device.type == "cpu" else 25  # host-device syncs to read the logged losses
    if callback is not None and step == 0:
        callback(0, ctx.unet)
    while step < cfg.steps and not done:
        ctx.step = step
        loss, log = _step(name, method, ctx, optimizer)
        method.after_step(log)
        pending.append({"step": step, **log, "loss": loss.detach()})
        step += 1
        bar.update(1)
        if callback is not None:
            callback(step, ctx.unet)

        # the stopping rule, on the model as it is now
        if stop is not None and (step % stop.every == 0 or step == cfg.steps):
            _flush(pending, history)
            done = _check_stop(stop, ctx, pipe, task, history, bar)

        # read the logs, stop on a non-finite loss, checkpoint
        save = ckpt_path and ((options.checkpoint_every and step % options.checkpoint_every == 0)
                              or step == cfg.steps or done)
        if save or step % sync_every == 0 or step == cfg.steps:
            _flush(pending, history)
            _check_finite(name, cfg, history[-sync_every:], ckpt_path)
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if save:
            _checkpoint(ckpt_path, identity, step, history, ctx, optimizer, generators, method)
    bar.close()
    if ckpt_path and cfg.steps == 0 and not ckpt_path.exists():  # a closed-form edit: its result is the checkpoint
        _checkpoint(ckpt_path, identity, 0, history, ctx, optimizer, generators, method)
    return _finish(name, method, ctx, pipe, history, time.time() - start, identity)


def _check_inputs(name, method, task, stop, data_from, pipe):
    # what can be refused before any work: a missing anchor, a stopping rule that cannot judge this task
    if method.needs_anchors and not task.anchor_prompts:
        raise ValueError(f"method {name!r} needs task.anchor_prompts (one per forget prompt); add them to the task")
    if method.config.steps == 0 and type(method).step is not Method.step:
        raise ValueError(f"steps=0 trains nothing: method {name!r} learns through its step; pass steps > 0 (steps=0 "
                         "is for closed-form methods, whose prepare makes the edit and which define no step)")
    if stop is not None:
        if not (isinstance(getattr(stop, "every", None), int) and stop.every > 0 and callable(stop)):
            raise TypeError(f"stop must be a stopping rule: a callable stop(pipeline, task, config) -> (log, done) "
                            f"with an int `every` > 0 (e.g. unlearnkit.until_forgotten(50)); got {stop!r}")
        if hasattr(stop, "validate"):
            stop.validate(task)
    if data_from is not None and data_from.unet.config.sample_size != pipe.unet.config.sample_size:
        raise ValueError("data_from must be a pipeline of the same model (same image size) as pipe, e.g. the original "
                         "one a sequence of erasures started from; pass data_from=None to train on pipe's own images")


def _context(pipe, task, method, options, cache_dir, data_from):
    # (ctx, optimizer, generators): the data, the UNets, the optimiser and what the method sees, after its prepare
    cfg = method.config
    accelerator, pipe = _setup(pipe, cfg, options)
    data, data_fp = _data(pipe, task, cfg, data_from, accelerator.device, cache_dir, options.progress)
    unet, base_unet, trainable, optimizer = _unets(pipe, cfg, options, accelerator)
    generators = [torch.Generator("cpu").manual_seed(cfg.seed + offset + accelerator.process_index)
                  for offset in (0, HELP_SEED_OFFSET)]  # the method's draws, L_help's
    scheduler = training_scheduler(pipe)
    ctx = StepContext(pipe=pipe, task=task, config=cfg, accelerator=accelerator, unet=unet, base_unet=base_unet,
                      trainable=trainable, data=data, generators=generators, scheduler=scheduler,
                      prediction_type=losses.check_prediction_type(scheduler.config.prediction_type),
                      fingerprint=pipeline_fingerprint(pipe), data_fingerprint=data_fp, cache_dir=cache_dir,
                      compile=options.compile)
    method.prepare(ctx)
    return ctx, optimizer, generators


def _on(pipe, device: torch.device):
    # the caller's pipeline stays where it is: on another device, train on a copy of its modules
    here = pipeline_device(pipe)
    if (here.type, here.index or 0) == (device.type, device.index or 0):
        return pipe
    parts = {k: copy.deepcopy(v).to(device) if isinstance(v, torch.nn.Module) else v for k, v in pipe.components.items()}
    return type(pipe)(**parts)


def _setup(pipe, cfg, options):
    # accelerate's device and precision; the pipeline's modules frozen (on the training device)
    want = resolve_device(options.device) if options.device is not None else pipeline_device(pipe)
    mp = options.mixed_precision if options.mixed_precision != "auto" else ("bf16" if want.type == "cuda" else "no")
    accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=want.type == "cpu")
    pipe = _on(pipe, accelerator.device)
    for module in (pipe.unet, pipe.text_encoder):
        module.requires_grad_(False)
    return accelerator, pipe


@torch.no_grad()
def _data(pipe, task, cfg, data_from, device, cache_dir, progress):
    # the data, once: base images -> the UNet's space, prompts -> embeddings; a closed-form run (steps=0) gets
    # the prompts and their embeddings only
    source = pipe if data_from is None else _on(data_from, device)
    data_fp = pipeline_fingerprint(source)
    if cfg.steps == 0:
        groups = {"forget": task.forget_prompts, "retain": task.retain_prompts}
        if task.anchor_prompts:
            groups["anchor"] = task.anchor_prompts
        return {k: (list(p), None, encode_prompts(pipe, list(p))) for k, p in groups.items()}, data_fp
    raw = training_data(source, task, cfg, cache_dir=cache_dir, fingerprint=data_fp, progress=progress)
    return {k: (p, encode_images(pipe, x), encode_prompts(pipe, p)) for k, (p, x) in raw.items()}, data_fp


def _unets(pipe, cfg, options, accelerator):
    # the model being unlearned: a copy of the base UNet (LoRA: adapters on it); the base stays frozen for targets
    base_unet = pipe.unet.eval()
    unet = copy.deepcopy(base_unet).train()
    if cfg.params == "lora":  # one UNet in memory: the frozen base's passes run it with the adapters off
        unet.add_adapter(lora_config(cfg))
        base_unet = None
    if options.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = select_params(unet, cfg.params)
    params = [p.requires_grad_(True) for _, p in trainable]
    if cfg.steps == 0:  # a closed-form method: no optimiser
        return accelerator.prepare(unet), base_unet, trainable, None
    device = accelerator.device
    fused = device.type == "cuda"  # one kernel per step on CUDA
    optimizer = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
                 if cfg.optimizer == "adamw" else torch.optim.Adam(params, lr=cfg.lr, fused=fused))
    unet, optimizer = accelerator.prepare(unet, optimizer)
    return unet, base_unet, trainable, optimizer


def _resume(ckpt_path, identity, ctx, optimizer, generators, method):
    # the last checkpoint in out_dir, when it is this run's: weights, optimiser, generators, method state
    if ckpt_path is None or not ckpt_path.exists():
        return 0, []
    ckpt = load_checkpoint(ckpt_path, expect="unlearn")
    if ckpt.get("identity") != identity:
        theirs = ckpt.get("identity") or {"method": ckpt.get("method"), "config": ckpt.get("config")}
        diff = sorted(k for k in identity if theirs.get(k) != identity[k])
        raise ValueError(f"{ckpt_path} belongs to another run (it differs in: {', '.join(diff)}; its method "
                         f"{theirs.get('method')!r}); pass a new out_dir or the same method, config, code and base "
                         "model (run options such as gradient_checkpointing may differ)")
    n = ctx.accelerator.num_processes
    if len(ckpt["generator"]) != n:
        raise ValueError(f"{ckpt_path} was written by {len(ckpt['generator'])} process(es), this run has {n}; "
                         "resume with as many, or pass a new out_dir")
    ctx.unet.load_state_dict(ckpt["unet"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    for g, state in zip(generators, ckpt["generator"][ctx.accelerator.process_index]):
        g.set_state(state)
    method.state.update(ckpt["method_state"])
    return ckpt["step"], ckpt["history"]


def _checkpoint(path, identity, step, history, ctx, optimizer, generators, method):
    # once, by the main process, with every process's generators
    states = [g.get_state() for g in generators]
    everyone = gather_object([states]) if ctx.accelerator.num_processes > 1 else [states]
    if ctx.accelerator.is_main_process:
        atomic_save({"kind": "unlearn", "identity": identity, "seed": ctx.config.seed, "step": step,
                     "history": history, "unet": ctx.unet.state_dict(),
                     "optimizer": optimizer.state_dict() if optimizer is not None else None, "generator": everyone,
                     "method_state": {k: method.state[k] for k in method.resume_keys}}, path)
    ctx.accelerator.wait_for_everyone()


def _step(name, method, ctx, optimizer):
    # one optimiser step: queue the passes (L_help's, the method's), run them, the loss, backward, mask, clip, step
    cfg, accelerator = ctx.config, ctx.accelerator
    for _ in range(cfg.grad_accum):
        with accelerator.accumulate(ctx._wrapped):
            loss, log, _ = _forward(name, method, ctx)
            accelerator.backward(loss)
            method.mask_gradients(ctx.params)
            if cfg.max_grad_norm and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(ctx.params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss, log


def _forward(name, method, ctx):
    # (loss, log, forget): queue the passes (L_help's, the method's), run them, the loss to backpropagate
    cfg = ctx.config
    ctx.new_step()
    help_in = _queue_help(ctx) if cfg.help_weight else None
    forget = ctx.draw("forget")
    loss_fn = method.step(ctx, forget)
    if not callable(loss_fn):
        raise TypeError(f"method {name!r}: step(ctx, forget) must return loss(out), a function of the queued "
                        f"passes' outputs (queue them with ctx.train / ctx.frozen / ctx.current); it returned "
                        f"a {type(loss_fn).__name__}")
    out, log = ctx.run(), {}
    if help_in is not None:
        (pred_c, pred_u), (base_c, base_u) = help_in
        out.help = losses.help_loss(out[pred_c], out[base_c], out[pred_u], out[base_u], cfg.help_uncond_weight)
        log["help"] = out.help
    loss, terms = _checked_loss(name, loss_fn(out))
    log.update(terms)
    if out.help is not None and method.adds_help:
        loss = loss + cfg.help_weight * out.help
    return loss, log, forget


@dataclass
class FirstStep:
    """The loop's first step of a method, stopped before the backward pass (`first_step`): everything needed to
    compute the method's loss again by hand, from `losses.*`, and compare it with `loss`.

    `ctx`: what the method saw (its data `ctx.x_f`, `ctx.e_f`, `ctx.e_r`, ..., and the UNet passes `ctx.model(x_t, t,
    emb)`, the trained UNet, still equal to the base at this step, and `ctx.base(x_t, t, emb)`, the frozen base).
    `method`: after its `prepare` (`method.state`: SalUn's mask, SA's Fisher, Saddle's τ and μ).
    `forget`: the forget batch the loop handed to `step` (x_t, t, noise, target). `draws`: the batches `step` drew
    itself, in order (SalUn's and SA's retain batch); `help_draw`: L_help's retain batch (None with `help_weight` 0).
    `passes`: the UNet inputs `step` queued, {'train' | 'frozen' |
    'current': [(x_t, t, emb), ...]} in queue order (L_help's not among them). `loss`: what the loop backpropagates
    (the method's loss, plus λ_help·L_help where it adds it); `log`: the terms it logs.
    """

    ctx: StepContext
    method: Method
    forget: object
    draws: list
    help_draw: object
    passes: dict
    loss: torch.Tensor
    log: dict


def first_step(pipe, task, method: str, config=None, cache_dir=None, progress: bool = False, **overrides) -> FirstStep:
    """The loop's first step of `method` on `task` (`config`: a run's config, e.g. `run.config`, else the method's
    defaults; `overrides` on top), computed exactly as `unlearn` computes it and stopped before the backward pass:
    a `FirstStep`. Nothing is trained; `pipe` is not modified."""
    from dataclasses import asdict

    name = canonical(method)
    settings = {**(asdict(config) if config is not None else {}), **overrides}
    settings, run_kw = split_settings(settings)
    m = make_method(name, **settings)
    options = replace(RunOptions(progress=progress), **run_kw)
    task = task.training_view()
    _check_inputs(name, m, task, None, None, pipe)
    ctx, _, _ = _context(pipe, task, m, options, cache_dir, None)
    ctx.step = 0
    draws, draw = [], ctx.draw

    def recorded(*args, **kwargs):
        d = draw(*args, **kwargs)
        draws.append(d)
        return d

    ctx.draw = recorded  # the draws made from here on: L_help's (when on), the forget batch, the method's own
    help_draws = 1 if m.config.help_weight else 0
    loss, log, forget = _forward(name, m, ctx)
    del ctx.draw
    passes = {k: list(q.parts) for k, q in ctx._queues.items()}
    if help_draws:  # L_help's two queued passes per model come first: the method's passes are the rest
        passes = {k: v[2:] if k in ("train", "frozen") else v for k, v in passes.items()}
    return FirstStep(ctx=ctx, method=m, forget=forget, draws=draws[help_draws + 1:],
                     help_draw=draws[0] if help_draws else None, passes=passes,
                     loss=loss.detach(), log={k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                                             for k, v in log.items()})


def _queue_help(ctx):
    # L_help's inputs: a retain batch from L_help's own generator, conditional and unconditional
    h = ctx.draw("retain", generator=ctx.help_generator)
    inputs = [(h.x_t, h.t, ctx.e_r[h.idx]), (h.x_t, h.t, ctx.null(len(h.idx)))]
    return [ctx.train(*a) for a in inputs], [ctx.frozen(*a) for a in inputs]


def _checked_loss(name, value):
    # the method's loss(out): a scalar tensor with a gradient, or (that, {name: tensor or float})
    loss, terms = value if isinstance(value, tuple) and len(value) == 2 else (value, {})
    contract = (f"method {name!r}: loss(out) must return a scalar tensor or (scalar tensor, {{name: value}}) "
                "that depends on a ctx.train pass")
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(value).__name__
        raise TypeError(f"{contract}; it returned {got}")
    if not loss.requires_grad:
        raise ValueError(f"{contract}; its loss has no gradient (no ctx.train output reaches it). A closed-form "
                         "method trains with steps=0 and makes its edit in prepare")
    if not isinstance(terms, dict):
        raise TypeError(f"{contract}; its second value is a {type(terms).__name__}, not a dict")
    return loss, terms


def _check_stop(stop, ctx, pipe, task, history, bar) -> bool:
    # the stopping rule on the current model (in eval mode); its log goes into the step's history entry
    was_training = ctx.unet.training
    try:
        log, done = stop(with_unet(pipe, ctx.unet.eval()), task, ctx.config)
    finally:
        ctx.unet.train(was_training)
    history[-1].update(log)
    if done:
        history[-1]["stopped"] = True
    bar.set_postfix({k: f"{v:.2f}" for k, v in log.items() if isinstance(v, float)})
    return bool(done)


def _flush(pending: list[dict], history: list[dict]) -> None:
    # read the logged tensors of several steps with one host-device sync
    tensors = [v.detach().double().reshape(()) for h in pending for v in h.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack(tensors).tolist() if tensors else [])
    for h in pending:
        history.append({k: next(values) if isinstance(v, torch.Tensor) else v for k, v in h.items()})
    pending.clear()


def _check_finite(name, cfg, recent, ckpt_path):
    bad = next((h for h in recent if not torch.isfinite(torch.tensor(h["loss"]))), None)
    if bad is not None:
        where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path and ckpt_path.exists() else ""
        raise FloatingPointError(f"{name}: loss became {bad['loss']} at step {bad['step']}{where}; lower lr "
                                 f"(now {cfg.lr}) or raise max_grad_norm clipping")


def _finish(name, method, ctx, pipe, history, seconds, identity) -> UnlearnResult:
    # the unlearned pipeline: the base's parts with the new UNet (LoRA fused into its weights, the adapter kept apart)
    method.finish(ctx)
    cfg, unet, lora = method.config, ctx.unet.eval().requires_grad_(False), None
    if cfg.params == "lora":
        from peft import get_peft_model_state_dict

        lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
        unet.fuse_lora()
        unet.unload_lora()
    return UnlearnResult(pipeline=with_unet(pipe, unet), history=history, method=name, config=cfg, seconds=seconds,
                         state=method.state, lora=lora, lora_config=lora_config(cfg) if lora is not None else None,
                         stop=identity["stop"], code=identity["code"])
