"""The run cache: `run_method` stores each unlearned UNet under its run's identity (base, task, method, config,
the method's code, stopping rule) and loads it back on the next call."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..backbone import with_unet
from ..evaluation.stopping import until_forgotten as until_forgotten_rule
from ..data import default_cache_dir, pipeline_fingerprint
from ..io import atomic_write, cache_key
from ..methods import canonical, make_method
from ..tasks import Task
from ..train import RunOptions, Snapshots, UnlearnResult, lora_config, run_identity, split_settings, train
from .profiles import Profile, profile
from .tuned import LORA_LR_MULT, tuned


def run_method(pipe, task: Task, method: str, prof: Profile | str = "cpu", cache_dir=None, progress=True,
               use_tuned: bool = True, snapshots=(), compile: str | None = None, data_from=None, stop=None,
               until_forgotten: int = 0, **overrides) -> UnlearnResult:
    """`unlearn` with the profile's settings and the task's tuned config (`TUNED`; `use_tuned=False` for the
    method's defaults), cached on disk: a second call with the same arguments loads the UNet.

    The cache keys on the run's identity (`run.run_identity`): base, task, method, config, a hash of the method's
    code (editing a method trains it again), training data and stopping rule; not on run options (`compile`,
    `gradient_checkpointing`, ... in `overrides`). `snapshots`: fractions of the steps (e.g. (0.25, 0.5)) after
    which the trained weights are kept too, in `result.snapshots` (cached beside the weights; a cached run without
    them trains again). `until_forgotten=N`: `stop=evaluation.until_forgotten(N, noise=prof.forget_noise)`. `data_from`: as in `unlearn`."""
    prof = profile(prof) if isinstance(prof, str) else prof
    name = canonical(method)
    settings, run_kw = split_settings(_settings(task, name, prof, use_tuned, overrides))
    method_obj = make_method(name, **settings)  # the config, built once
    cfg = method_obj.config
    options = RunOptions(progress=progress, compile=compile, **run_kw)
    if until_forgotten:
        stop = until_forgotten_rule(until_forgotten, noise=prof.forget_noise)  # checked on the images evaluate judges
    data_fp = pipeline_fingerprint(data_from) if data_from is not None else pipeline_fingerprint(pipe)
    identity = run_identity(name, cfg, pipeline_fingerprint(pipe), data_fp, stop)
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / "runs" / \
        f"{task.name}-{name}-{cache_key([identity, asdict(task)])}"
    weights, meta = folder / "unet.safetensors", folder / "run.json"
    if snapshots and cfg.params == "lora":
        raise ValueError("snapshots= is not supported for params='lora' runs; drop it or train full weights")
    steps = sorted({min(cfg.steps, max(0, round(f * cfg.steps))) for f in snapshots})
    info = json.loads(meta.read_text()) if weights.exists() and meta.exists() else None
    if info is not None and {str(k) for k in steps} <= set(info.get("snapshots", {})):
        unet = copy.deepcopy(pipe.unet)
        unet.load_state_dict(load_file(str(weights)), strict=True)
        unet.to(next(pipe.unet.parameters()).device).eval().requires_grad_(False)
        lora = load_file(str(folder / "lora.safetensors")) if (folder / "lora.safetensors").exists() else None
        state = _load_state(folder / "state.safetensors", info.get("state", {}))
        kept = _load_state(folder / "snapshots.safetensors", {str(k): {"dict": info["snapshots"][str(k)]} for k in steps})
        return UnlearnResult(pipeline=with_unet(pipe, unet), history=info["history"], method=name, config=cfg,
                             state=state, seconds=info["seconds"], lora=lora,
                             lora_config=lora_config(cfg) if lora else None,
                             snapshots={int(k): v for k, v in kept.items()}, stop=identity["stop"],
                             code=identity["code"])
    keep = Snapshots(steps)
    result = train(pipe, task, name, method_obj, options, cache_dir=cache_dir, callback=keep if steps else None,
                   stop=stop, data_from=data_from)
    result.snapshots = keep.weights
    state = {k: v.detach().cpu().contiguous() for k, v in result.pipeline.unet.state_dict().items()}
    if result.lora is not None:  # written before the weights: a folder with weights and run.json is complete
        lora = {k: v.detach().cpu().contiguous() for k, v in result.lora.items()}
        atomic_write(folder / "lora.safetensors", lambda tmp: save_file(lora, tmp))
    tensors, layout = _split_state(result.state)
    atomic_write(folder / "state.safetensors", lambda tmp: save_file(tensors, tmp))
    kept, kept_layout = _split_state({str(k): v for k, v in keep.weights.items()})
    if kept:
        atomic_write(folder / "snapshots.safetensors", lambda tmp: save_file(kept, tmp))
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(
        {"identity": identity, "seconds": result.seconds, "history": result.history,
         "state": layout, "snapshots": {k: v["dict"] for k, v in kept_layout.items()}}, default=str)))
    return result


def _settings(task: Task, name: str, prof: Profile, use_tuned: bool, overrides: dict) -> dict:
    # run_method's config overrides: the profile's, the task's tuned config (or its kind's rule), the caller's; LoRA
    # runs get their method's lr multiple (LORA_LR_MULT) unless lr is given
    profile_settings = prof.settings(name)
    if make_method(name).config.steps == 0:  # a closed-form method stays one under every profile
        profile_settings.pop("steps", None)
    settings = {**profile_settings, **(tuned(task.name, name, task.kind) if use_tuned else {}), **overrides}
    if settings.get("params") == "lora" and "lr" not in overrides and name in LORA_LR_MULT:
        settings["lr"] = make_method(name, **split_settings(settings)[0]).config.lr * LORA_LR_MULT[name]
    return settings


def _split_state(state: dict) -> tuple[dict, dict]:
    # a method's state as (tensors for safetensors, a JSON layout): tensors, {name: tensor}, [tensor], or JSON values
    tensors, layout = {}, {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            tensors[k], layout[k] = v.detach().cpu().contiguous(), "tensor"
        elif isinstance(v, dict) and v and all(isinstance(x, torch.Tensor) for x in v.values()):
            tensors.update({f"{k}/{n}": x.detach().cpu().contiguous() for n, x in v.items()})
            layout[k] = {"dict": list(v)}
        elif isinstance(v, list) and v and all(isinstance(x, torch.Tensor) for x in v):
            tensors.update({f"{k}/{i}": x.detach().cpu().contiguous() for i, x in enumerate(v)})
            layout[k] = {"list": len(v)}
        else:
            layout[k] = {"json": v}
    return tensors, layout


def _load_state(path: Path, layout: dict) -> dict:
    tensors = load_file(str(path)) if path.exists() else {}
    state = {}
    for k, how in layout.items():
        if how == "tensor":
            state[k] = tensors[k]
        elif "dict" in how:
            state[k] = {n: tensors[f"{k}/{n}"] for n in how["dict"]}
        elif "list" in how:
            state[k] = [tensors[f"{k}/{i}"] for i in range(how["list"])]
        else:
            state[k] = how["json"]
    return state
