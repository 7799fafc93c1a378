"""The command line: `unlearnkit train-base | sample | unlearn | evaluate | report | attack | export | reproduce` (also `python -m unlearnkit`).

Every subcommand calls the same functions the notebooks call. Bad input prints one line naming
the input and the fix, and exits 2. Methods of one's own: `unlearnkit --import my_methods unlearn --method
mine ...` imports `my_methods` (a module name or a .py file) first, so that its `register_method` calls run;
an installed package's methods come in through the `unlearnkit.methods` entry-point group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


RUN_FILE = "run.json"  # in a run folder: the base it was unlearned from (`unlearnkit export` reads it)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty; give at least one seed, e.g. --seeds 0,1")
    return seeds


def _override(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--set takes FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _load(path: str | None, device: str, config: str | None = None, role: str = "--model"):
    """The model a command-line argument names (`models.open_model`: 'base', a folder, a run folder, a file)."""
    from ..models import open_model

    return open_model("base" if path is None else path, role, config=config, device=device)


def _tasks(args) -> list:
    """The task(s) named on the command line: one per --forget word, in order, or the built-in --task."""
    from ..catalog import get_task
    from ..world import task

    if args.forget:
        return [task(forget=w, neighbour=args.neighbour if i == 0 else None) for i, w in enumerate(args.forget)]
    return [get_task(args.task)]


def _task(args):
    tasks = _tasks(args)
    if len(tasks) > 1:
        raise ValueError(f"{args.command} takes one --forget word, got {len(tasks)}: {', '.join(args.forget)}")
    return tasks[0]


def cmd_train_base(args):
    from ..basetrain import train_base

    overrides = dict(_override(s) for s in args.set)
    result = train_base(args.out, device=args.device, progress=not args.json, steps=args.steps,
                        batch_size=args.batch_size, seed=args.seed, **overrides)
    return result


def cmd_sample(args):
    from torchvision.utils import save_image

    from ..sampling import sample

    pipe = _load(args.model, args.device, args.config)
    images = sample(pipe, args.prompt, _seeds(args.seeds), steps=args.steps, guidance_scale=args.guidance,
                    progress=not args.json)
    save_image(images, args.out, nrow=len(_seeds(args.seeds)), padding=1)
    return {"images": len(images), "out": args.out}


def import_user_modules(names) -> list[str]:
    """Import each of `names` (a module name, found from the current folder too, or a path to a .py file) so that
    its `register_method` calls run; returns the methods they added. A module that fails is a ValueError naming it."""
    import importlib
    import importlib.util

    if not names:
        return []
    from ..methods import METHODS

    before = set(METHODS)
    for name in names:
        try:
            if name.endswith(".py") or "/" in name:
                path = Path(name)
                if not path.is_file():
                    raise FileNotFoundError(f"no such file {name!r}")
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                sys.path.insert(0, str(Path.cwd())) if str(Path.cwd()) not in sys.path else None
                importlib.import_module(name)
        except Exception as e:
            raise ValueError(f"--import {name}: {type(e).__name__}: {e}; pass a module name on the Python path or a "
                             ".py file that registers methods with unlearnkit.register_method") from e
    return sorted(set(METHODS) - before)


def cmd_unlearn(args):
    names = _method_names()  # an unknown name fails at once, before torch loads (methods.canonical says the same)
    if args.method not in names:
        raise ValueError(f"unknown method {args.method!r}; known methods: {', '.join(names)} (a method of your own: "
                         "register_method it, or `unlearnkit --import your_module ...` on the command line)")
    from ..evaluation.stopping import until_forgotten
    from ..methods import make_config
    from ..train import RunOptions, split_settings, unlearn

    overrides, run_kw = split_settings(dict(_override(s) for s in args.set))
    every = args.until_forgotten or overrides.pop("until_forgotten", 0)
    make_config(args.method, **overrides)  # a bad method or field fails before any model loads
    options = RunOptions(progress=not args.json, compile=args.compile, **run_kw)
    stop = until_forgotten(int(every)) if every else None
    tasks = _tasks(args)
    if stop is not None:
        stop.validate(tasks[0])
    pipe = _load(args.model, args.device, args.config)
    if len(tasks) == 1:
        result = unlearn(pipe, tasks[0], args.method, out_dir=args.out, options=options, stop=stop, **overrides)
    else:  # several --forget words: erased in order, each stage from the last (checkpoints in stage-N/)
        from ..evaluation.sequence import stage_tasks

        history = []
        for i, task in enumerate(stage_tasks(tasks)):
            result = unlearn(pipe, task, args.method, out_dir=Path(args.out) / f"stage-{i + 1}", options=options,
                             stop=stop, **overrides)
            pipe = result.pipeline
            history += [{"stage": i + 1, "forget": task.forget_concept, **h} for h in result.history]
        result.history = history
    from ..export import save_diffusers

    target = Path(args.out) / "pipeline"
    save_diffusers(result.pipeline, target)  # a whole diffusers folder: from_pretrained opens it anywhere
    # the base as an absolute path (or hub id / 'base'), so export can take the weight change from any directory
    base = str(Path(args.model).resolve()) if args.model not in (None, "base") and Path(args.model).exists() else \
        (args.model or "base")
    config = str(Path(args.config).resolve()) if args.config and Path(args.model).is_file() else None
    (Path(args.out) / RUN_FILE).write_text(json.dumps({"base": base, "config": config, "method": result.method}))
    if getattr(result, "lora", None) is not None:  # a LoRA run keeps its adapter for `unlearnkit export`
        from ..export import export

        export(result, Path(args.out) / "lora", format="lora", overwrite=True)  # the run's own adapter, renewed
    (Path(args.out) / "history.json").write_text(json.dumps(result.history))
    return {"method": result.method, "pipeline": str(target), "seconds": round(result.seconds, 2),
            "final_loss": result.history[-1]["loss"], "forgot": [t.forget_concept or t.name for t in tasks],
            "steps_done": len(result.history), **({"forget_checks": result.forget_checks} if result.forget_checks else {})}


def cmd_attack(args):
    from ..evaluation.attacks import attack

    unlearned = _load(args.model, args.device, args.config, role="MODEL")
    base = _load(args.base, args.device, args.config, role="--base")
    r = attack(unlearned, _task(args), steps=args.steps, base=base, seeds=_seeds(args.seeds),
               sample_steps=args.sample_steps)
    return {k: v for k, v in r.items() if k != "history"}


def cmd_evaluate(args):
    from ..evaluation.suite import evaluate

    base = _load(args.base, args.device, args.config, role="--base")
    unlearned = _load(args.model, args.device, args.config, role="MODEL")
    import warnings

    from ..evaluation.judges import DidNotForget

    with warnings.catch_warnings(record=True) as caught:  # printed once below, as the CLI's own line
        warnings.simplefilter("always", DidNotForget)
        result = evaluate(base, unlearned, _task(args), seeds=_seeds(args.seeds), steps=args.steps,
                          guidance_scale=args.guidance, lpips_net=args.lpips_net, max_retain=args.max_retain,
                          progress=not args.json, on=args.on,
                          forget_seeds=_seeds(args.forget_seeds) if args.forget_seeds else None, name=args.model,
                          forget_noise=args.forget_noise)
    for w in caught:
        if issubclass(w.category, DidNotForget):
            print(f"unlearnkit evaluate: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return dict(result)


def cmd_report(args):
    import warnings

    from ..evaluation.report import report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the report keeps its warnings: printed below, once each
        r = report(args.base, args.edited, out=args.out, prompts=args.prompts, forget=args.forget,
                   neighbour=args.neighbour, lora=args.lora, config=args.config, seeds=_seeds(args.seeds),
                   steps=args.steps, guidance_scale=args.guidance, on=args.on, clip=args.clip,
                   lpips_net=args.lpips_net, worst=args.worst, overwrite=args.overwrite, device=args.device,
                   progress=not args.json, forget_seeds=_seeds(args.forget_seeds) if args.forget_seeds else None,
                   forget_noise=args.forget_noise)
    for w in r["warnings"]:
        print(f"unlearnkit report: warning: {w}", file=sys.stderr)
    measured = lambda key: r[key].get("value")  # noqa: E731  (None: not measured, report.md says why)
    return {"report": str(Path(args.out) / "report.md"), "lpips_ret": r["lpips_ret"]["value"],
            "lpips_ret_ci": r["lpips_ret"]["ci"], "integrity": r["integrity"]["value"],
            "forget_rate": measured("forget_rate"), "retain_accuracy": measured("retain_accuracy"),
            "fid": measured("fid"), "seconds": r["seconds"]}


def cmd_export(args):
    from types import SimpleNamespace

    from ..export import LORA_WEIGHT_NAME, check_target, export, read_lora

    check_target(Path(args.out), args.format, args.overwrite, [args.source])  # before any model loads
    source = Path(args.source)
    if not source.exists():
        raise ValueError(f"{args.source!r} does not exist (from {Path.cwd()}); pass a run folder (unlearnkit unlearn "
                         "--out), a pipeline folder, a single-file checkpoint or a LoRA folder")
    run = (source / "pipeline").is_dir()  # a run folder written by `unlearnkit unlearn --out`
    folder = source / "lora" if run else source
    kw = dict(format=args.format, overwrite=args.overwrite, source=args.source, dtype=args.dtype)
    if args.format in ("lora", "kohya") and (folder / LORA_WEIGHT_NAME).exists() and args.base is None:
        lora, lora_config = read_lora(folder)  # the LoRA formats need only the adapter: RUN/lora or a LoRA folder
        return {"format": args.format, "out": str(export(SimpleNamespace(pipeline=None, lora=lora,
                                                                            lora_config=lora_config), args.out, **kw))}
    model = _load(str(source / "pipeline") if run else args.source, args.device, args.config, role="SOURCE")
    if args.format in ("diffusers", "single-file"):
        return {"format": args.format, "out": str(export(model, args.out, **kw))}
    # a full-weight run (or pipeline): the LoRA is the SVD of its weight change against the base
    from ..lora_extract import extract_lora

    base_path = args.base or (json.loads((source / RUN_FILE).read_text())["base"] if (source / RUN_FILE).exists()
                              else None)
    if base_path is None:
        raise ValueError(f"{args.source!r} trained full weights and records no base; pass --base <the model it was "
                         "unlearned from> to extract a LoRA by SVD of the weight change")
    base = _load(base_path, args.device, args.config, role="--base")
    lora, lora_config, report = extract_lora(base, model, rank=args.rank)
    out = export(SimpleNamespace(pipeline=model, lora=lora, lora_config=lora_config), args.out, **kw)
    return {"format": args.format, "out": str(out), "base": base_path, "rank": args.rank, "layers": report.layers,
            "svd_relative_error": round(report.relative_error, 6), "worst_layer": report.worst_layer,
            "worst_relative_error": round(report.worst_relative_error, 6),
            "not_carried": len(report.not_carried),
            "not_carried_relative_change": round(report.not_carried_relative_change, 6)}


def cmd_reproduce(args):
    from .reproduce import reproduce

    return reproduce(profile=args.profile, out_dir=args.out, only=args.only, device=args.device or "auto")


def _import_arg(p):
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE (a module name or a .py file) first: its register_method calls add methods")


# the built-in methods and aliases, named without importing them (torch and diffusers take seconds to load):
# `--help` lists these unless a module already registered more (tests/test_project.py checks them against METHODS)
BUILTIN_METHODS = ("ga", "esd-x", "esd-u", "salun", "sa", "saddle", "ovw", "ovw-nohelp", "uce", "ca", "ca-noise", "fmn",
                   "esd")
ENTRY_POINT_GROUP = "unlearnkit.methods"  # methods.base.ENTRY_POINT_GROUP, read here without importing the methods


def _method_names() -> list[str]:
    from importlib.metadata import entry_points

    if entry_points(group=ENTRY_POINT_GROUP):  # installed packages' methods, so that --help lists them
        from ..methods import load_entry_points

        load_entry_points()
    if "unlearnkit.methods" not in sys.modules:
        return list(BUILTIN_METHODS)
    from ..methods import ALIASES, METHODS

    return [*METHODS, *ALIASES]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearnkit", description=__doc__.splitlines()[0])
    _import_arg(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("--device", default="auto", help="auto (cuda when there is a GPU, else cpu), cpu or cuda")
        sp.add_argument("--json", action="store_true", help="print the result as one JSON object")

    def config_arg(sp):
        sp.add_argument("--config", default=None, metavar="FOLDER",
                        help="for a single-file checkpoint (.safetensors / .ckpt): a diffusers folder of the same "
                             "architecture (a saved pipeline or a downloaded model's folder) to read its configs from")

    def forget_noise_arg(sp):  # the choices are sampling.NOISE (not imported here: the CLI starts without torch)
        sp.add_argument("--forget-noise", default="shared", choices=("shared", "per-image"),
                        help="the forget images' noise: one per seed, every forget prompt starting from it (shared, "
                             "the default), or one per image (per-image: independent images, an honest forget-rate "
                             "interval)")

    def task_args(sp):
        sp.add_argument("--task", default="object", help="built-in task: object, style, sd-vangogh, sd-cat")
        sp.add_argument("--forget", action="append", default=None, metavar="WORD",
                        help="forget this concept word of the embedded world instead (unlearn: repeat it to erase "
                             "several concepts in order)")
        sp.add_argument("--neighbour", default=None, help="with --forget: the retain concept to watch first")

    sp = sub.add_parser("train-base", help="train the embedded base model from scratch (resumable)")
    sp.add_argument("--out", default="runs/base", help="folder for checkpoints and the final pipeline")
    sp.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    sp.add_argument("--batch-size", type=int, default=32, help="images per step")
    sp.add_argument("--seed", type=int, default=0, help="training seed")
    sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="other BaseTrainConfig fields")
    common(sp)
    sp.set_defaults(func=cmd_train_base)

    sp = sub.add_parser("sample", help="generate images, one per (prompt, seed), into a PNG grid")
    sp.add_argument("prompt", nargs="+", help="prompts, e.g. 'a red circle, striped style'")
    sp.add_argument("--model", default="base", help="'base' (shipped model), a pipeline folder or a hub id")
    sp.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    sp.add_argument("--steps", type=int, default=20, help="DDIM steps")
    sp.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    sp.add_argument("--out", default="samples.png", help="output PNG")
    config_arg(sp)
    common(sp)
    sp.set_defaults(func=cmd_sample)

    sp = sub.add_parser("unlearn", help="unlearn a task with a method; saves the unlearned pipeline")
    sp.add_argument("--method", default="esd-x", help=f"one of: {', '.join(_method_names())} (more with --import)")
    sp.add_argument("--model", default="base", help="the base: 'base', a pipeline folder or a hub id")
    sp.add_argument("--out", required=True, help="run folder: checkpoints (resume), pipeline/, history.json")
    sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="the method's config fields or run options (mixed_precision, gradient_checkpointing, "
                         "checkpoint_every), e.g. --set steps=200 --set help_weight=1")
    sp.add_argument("--until-forgotten", type=int, default=0, metavar="N",
                    help="a check every N steps (held-out seeds, the classifier) stops the run once the concept is "
                         "gone (also --set until_forgotten=N)")
    sp.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                    help="run the UNet passes through torch.compile (reduce-overhead: CUDA graphs; for GPUs)")
    config_arg(sp)
    task_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_unlearn)

    sp = sub.add_parser("evaluate", help="retention metric I, forget rate, accuracy and FID of a model vs its base")
    sp.add_argument("model", help="the unlearned pipeline folder")
    sp.add_argument("--base", default="base", help="the base model ('base', a folder or a hub id)")
    sp.add_argument("--seeds", default="0,1", help="comma-separated evaluation seeds")
    sp.add_argument("--steps", type=int, default=20, help="DDIM steps")
    sp.add_argument("--guidance", type=float, default=2.0, help="guidance scale")
    sp.add_argument("--lpips-net", default="stlpips", help="stlpips (offline) or lpips-alex")
    sp.add_argument("--max-retain", type=int, default=None, help="evaluate the first N retain prompts")
    sp.add_argument("--on", default="eval", choices=("eval", "train", "both"),
                    help="which retain prompts: eval (held out from training, the default), train, or both")
    sp.add_argument("--forget-seeds", default=None,
                    help="comma-separated seeds of the forget images (default: --seeds); more seeds, a narrower "
                         "forget-rate interval")
    forget_noise_arg(sp)
    config_arg(sp)
    task_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("report", help="the integrity report of an edited model against its base: report.md, "
                                       "report.json and figures in --out")
    model_kinds = ("'base' (the shipped embedded model), a diffusers folder, a run folder (unlearnkit unlearn --out), "
                   "a single-file checkpoint (with --config) or a hub id")
    sp.add_argument("base", help=f"the model before the edit: {model_kinds}")
    sp.add_argument("edited", nargs="?", default=None, help="the edited model, the same kinds; leave it out with "
                                                            "--lora")
    sp.add_argument("--lora", default=None, metavar="FILE", help="instead of EDITED: a kohya .safetensors file or a "
                    "LoRA folder (unlearnkit export --format kohya | lora), put on a copy of BASE")
    sp.add_argument("--prompts", default=None, metavar="FILE", help="one prompt a line, or a template file "
                    "('template: a {colour} {object}' and lists 'colour: red, blue'), or a shipped list: embedded, "
                    "sd-painters, sd-objects (default on the embedded model: its world's prompts)")
    sp.add_argument("--forget", default=None, metavar="WORD", help="the forgotten concept: prompts with this word "
                                                                   "are forget prompts, the rest retain prompts")
    sp.add_argument("--neighbour", default=None, metavar="WORD", help="with --forget: the retain concept to watch first")
    sp.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    sp.add_argument("--forget-seeds", default=None, help="the forget images' seeds (default: --seeds); more, a "
                                                          "narrower forget-rate interval")
    forget_noise_arg(sp)
    sp.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    sp.add_argument("--guidance", type=float, default=2.0, help="guidance scale (default 2.0, the embedded model's)")
    sp.add_argument("--on", default="eval", choices=["eval", "train"], help="on the embedded world's built-in task: "
                    "its held-out retain prompts (eval, default) or its training ones")
    sp.add_argument("--clip", default=None, metavar="MODEL", help="off the embedded world: a CLIP model (local folder "
                    "or cached hub id) that judges forgetting zero-shot and gives CLIPScore")
    sp.add_argument("--lpips-net", default="stlpips", help="stlpips (offline) or lpips-alex")
    sp.add_argument("--worst", type=int, default=4, help="the worst retain pairs drawn (default 4)")
    sp.add_argument("--out", required=True, help="the report's folder: report.md, report.json, PNGs")
    sp.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    config_arg(sp)
    common(sp)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("attack", help="learn a word that brings the forgotten concept back; the recovered forget rate")
    sp.add_argument("model", help="the unlearned pipeline folder (or 'base' for the reference)")
    sp.add_argument("--base", default="base", help="the base model whose images of the concept the word is learned on")
    sp.add_argument("--steps", type=int, default=100, help="optimiser steps on the new word's embedding")
    sp.add_argument("--seeds", default="0", help="comma-separated seeds of the judged images")
    sp.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the judged images")
    config_arg(sp)
    task_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_attack)

    sp = sub.add_parser("export", help="write a run or pipeline as a diffusers folder, one single-file checkpoint, "
                                       "a LoRA or a kohya LoRA file")
    sp.add_argument("source", help="a run folder (unlearnkit unlearn --out), a pipeline folder, a single-file "
                                   "checkpoint (with --config) or, for the LoRA formats, a LoRA folder")
    sp.add_argument("--out", required=True, help="a folder (diffusers, lora) or a .safetensors file (single-file, "
                                                 "kohya)")
    sp.add_argument("--format", default="diffusers", choices=["diffusers", "single-file", "lora", "kohya"],
                    help="diffusers: the whole pipeline; single-file: one checkpoint in SD's original layout "
                         "(AUTOMATIC1111 / ComfyUI); lora: pytorch_lora_weights.safetensors for load_lora_weights; "
                         "kohya: one LoRA file for AUTOMATIC1111 / ComfyUI")
    sp.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="weights' type (default: as "
                                                                                     "trained)")
    sp.add_argument("--rank", type=int, default=16, help="lora/kohya from a full-weight run: the SVD's rank")
    sp.add_argument("--base", default=None, help="lora/kohya from a full-weight run: the model it was unlearned from "
                                                 "(default: the one the run folder records)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the source itself)")
    config_arg(sp)
    common(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("reproduce", help="run every notebook through papermill and write figures/")
    sp.add_argument("--profile", default="cpu", help="smoke (seconds), cpu (the embedded reproduction), full (the paper's budget on a CPU; notebook 10: over an hour on 2 cores) or gpu")
    sp.add_argument("--out", default="executed", help="folder for the executed notebooks")
    sp.add_argument("--only", default=None, help="comma-separated notebook name prefixes to run, e.g. 00,08; or 'paper' (00-11), 'beyond' (12-14)")
    common(sp)
    sp.set_defaults(func=cmd_reproduce)
    return p


def main(argv=None) -> int:
    # --import runs before the parser is built: the modules' methods then appear in --help
    pre = argparse.ArgumentParser(add_help=False)
    _import_arg(pre)
    known, _ = pre.parse_known_args(argv)
    try:
        import_user_modules(known.imports)
    except ValueError as e:
        print(f"unlearnkit: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"unlearnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    elif result is not None:
        for k, v in result.items():
            # evaluate's retain_pairs: one row per (prompt, seed), too long for a line; --json prints them
            print(f"{k}: {len(v)} rows (--json lists them)" if isinstance(v, list) and v and isinstance(v[0], dict)
                  else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
