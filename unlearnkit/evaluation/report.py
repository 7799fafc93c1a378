"""The integrity report: two checkpoints in; a Markdown page, its numbers as JSON and its figures out (docs/REPORT.md).

`report(base, edited, out=DIR, ...)` (and `unlearnkit report BASE EDITED --out DIR`) loads both models with the kit's
own loaders (or puts a LoRA file on a copy of the base), reads the prompts (`prompt_files`), measures with `evaluate`
and writes DIR/report.md, DIR/report.json and the PNGs it links, all at once or not at all (`io.atomic_folder`).
The page is drawn from the JSON (`report_page.py`), so the two never disagree.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from pathlib import Path

from .. import __version__
from ..backbone import is_latent, sample_shape
from ..data import cached_sample_pairs, pipeline_fingerprint
from ..io import atomic_folder, refuse_to_destroy
from ..models import open_model
from ..prompt_files import SHIPPED, read_prompts, prompt_task
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, noise_seeds
from .lpips import LPIPS_SIZE, LPIPSDistance
from .report_page import forget_figure_rows, numbers, page, pairs_figure
from .suite import evaluate

REPORT_FILE, JSON_FILE = "report.md", "report.json"
WORST = 4  # the worst retain pairs drawn (base | edited | LPIPS map)
# UNet config keys that fix what the two models' images and prompts are: two models differing in one cannot be compared
ARCHITECTURE = ("in_channels", "out_channels", "sample_size", "block_out_channels", "down_block_types",
                "up_block_types", "cross_attention_dim")


def report(base, edited=None, out=None, prompts=None, forget: str | None = None, neighbour: str | None = None,
           lora=None, config=None, seeds=(0, 1), steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
           on: str = "eval", clip=None, lpips_net: str = "stlpips", lpips_size: int = LPIPS_SIZE, worst: int = WORST,
           overwrite: bool = False, device="auto", cache_dir=None, progress: bool | None = None,
           forget_seeds=None, forget_noise: str = "shared") -> dict:
    """Write the integrity report of `edited` against `base` into the folder `out`; returns its numbers (what
    report.json holds, plus 'out').

    `base`, `edited`: 'base' (the shipped embedded model), a diffusers folder, a run folder (`unlearnkit unlearn
    --out`), a single-file checkpoint (with `config`, a diffusers folder of its architecture), a hub id, or a loaded
    pipeline. Or `edited=None` and `lora`: a kohya `.safetensors` file or a LoRA folder (`export(..., format='kohya'
    | 'lora')`, a LoRA run's folder) put on a copy of `base`. `prompts`: a prompt file, a template file or a shipped
    list's name (default on the embedded model: its world's prompts). `forget` splits them into forget prompts (those
    with the word) and retain prompts; `neighbour` is the retain concept to watch first. `on`: which retain prompts
    when the task is the world's built-in one ('eval', its held-out third, or 'train'). `clip`: a CLIP model that
    judges forgetting off the embedded world. `forget_seeds`: the forget images' seeds
    (default `seeds`); `forget_noise`: 'shared' (one noise per seed) or 'per-image' (`evaluate`'s). A non-empty `out` is refused unless `overwrite` and it holds a report.
    """
    if out is None:
        raise ValueError("report needs out=<a folder for report.md, report.json and the figures>")
    out = Path(out)
    if (edited is None) == (lora is None):
        raise ValueError("pass the edited model (EDITED) or a LoRA to put on the base (--lora FILE), one of the two"
                         if edited is None else "pass EDITED or --lora, not both: --lora goes on a copy of BASE")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. --seeds 0,1")
    if worst < 0:
        raise ValueError(f"worst must be >= 0 (the worst pairs drawn), got {worst}")
    if on not in ("eval", "train"):
        raise ValueError(f"on={on!r}: choose 'eval' (the built-in task's held-out retain prompts) or 'train'")
    check_out(out, overwrite, [base, edited, lora])
    plist = read_prompts(prompts) if prompts is not None else None  # a bad prompt file fails before any model loads
    start = time.time()
    base_pipe = open_model(base, "BASE", config, device)
    if lora is not None:
        edited_pipe = with_lora(base_pipe, lora, _name(base))
    elif _same_source(base, edited):
        edited_pipe = base_pipe  # one model twice: loaded once
    else:
        edited_pipe = open_model(edited, "EDITED", config, device)
    check_compatible(base_pipe, edited_pipe, _name(base), _name(edited) if lora is None else f"{_name(base)} + LoRA")
    if plist is None:
        if is_latent(base_pipe):
            raise ValueError("pass --prompts FILE for a Stable Diffusion model (one prompt a line or a template file; "
                             "shipped lists: sd-painters, sd-objects); only the embedded model has default prompts")
        plist = read_prompts("embedded")
    task = prompt_task(plist, forget, neighbour)
    lpips = LPIPSDistance(lpips_net, lpips_size)
    part = task.retain_train if on == "train" else task.retain_eval
    fid = len(part) * len(seeds) >= 2  # a Fréchet distance needs two images a side
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = evaluate(base_pipe, edited_pipe, task, seeds=seeds, steps=steps, guidance_scale=guidance_scale,
                      lpips=lpips, clip=clip, cache_dir=cache_dir, progress=progress, on=on, fid=fid,
                      forget_seeds=forget_seeds, forget_noise=forget_noise)
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for note in notes:
        warnings.warn(note, stacklevel=2)
    data = numbers(ev, task, forget=forget, clip=clip)
    data = {"unlearnkit": __version__,
            "models": {"base": _name(base), "edited": None if lora is not None else _name(edited),
                       "lora": None if lora is None else _name(lora), "config": None if config is None else str(config)},
            "prompts": {"source": _source(plist.source), "n": len(plist.prompts), "forget_word": forget,
                        "neighbour": neighbour, "task": task.name, **data.pop("prompts")},
            **data, "warnings": notes}

    def images(pairs, noise="shared"):  # the forget figure's images are those the forget rate judged
        prompts_ = [p for p, _ in pairs]
        seeds_ = noise_seeds(prompts_, [s for _, s in pairs], noise)
        return tuple(cached_sample_pairs(pipe, prompts_, seeds_, steps, guidance_scale, cache_dir, progress=False)
                     for pipe in (base_pipe, edited_pipe))

    figures = {}
    worst_pairs = data["worst_pairs"][:worst]
    if worst_pairs:
        figures["worst_pairs"] = ("worst-pairs.png", "The worst retain pairs", [(p["prompt"], p["seed"]) for p in
                                                                                 worst_pairs])
    if forget is not None and worst:
        figures["forget_pairs"] = ("forget-pairs.png", "Forget prompts", forget_figure_rows(task, ev.forget_seeds,
                                                                                              worst))
    drawn = {}
    for key, (file, title, pairs) in figures.items():
        x0, x = images(pairs, ev.forget_noise if key == "forget_pairs" else "shared")
        drawn[key] = (file, title, pairs, x0, x, lpips(x0, x), lpips.map(x0, x)[:, 0])
    data["figures"] = {k: v[0] for k, v in drawn.items()}
    data["seconds"] = round(time.time() - start, 1)

    def write(folder):
        for file, title, pairs, x0, x, d, maps in drawn.values():
            pairs_figure(pairs, x0, x, d, maps, f"{title}: base | edited | LPIPS map ({ev.lpips_net})", folder / file)
        (folder / JSON_FILE).write_text(json.dumps(data, indent=1, default=float) + "\n")
        (folder / REPORT_FILE).write_text(page(data))

    atomic_folder(out, write)
    return {**data, "out": str(out)}


def _name(spec) -> str:
    # how the page names an input: the path or id as given, a loaded pipeline by the folder it came from
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    return str(getattr(getattr(spec, "config", None), "_name_or_path", None) or type(spec).__name__)


def _source(source: str) -> str:
    return f"{source} (shipped: unlearnkit/prompts/{source}.txt)" if (SHIPPED / f"{source}.txt").exists() and \
        not Path(source).exists() else source


def _same_source(a, b) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return a is b
    return str(a) == str(b) or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def check_out(out: Path, overwrite: bool, sources) -> None:
    """One clear error, before anything loads, for a report folder that would destroy something: a file, a folder
    that is or holds an input, a non-empty folder without `overwrite`, or (even with it) one that holds no report."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {str(out)!r} is a file; pass a folder path for --out")
    inputs = [p for src in sources if isinstance(src, (str, os.PathLike)) and Path(src).exists()
              for p in (Path(src), Path(src) / "pipeline")]  # a run folder's model is its pipeline/
    refuse_to_destroy(out, inputs, "report folder", "an input", "pass another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"report folder {str(out)!r} exists and is not empty; pass --overwrite (overwrite=True) "
                             "to replace an earlier report, or another --out")
        if not (out / JSON_FILE).exists():
            raise ValueError(f"report folder {str(out)!r} holds no {JSON_FILE}: it is not an earlier report, so "
                             "--overwrite will not delete it; pass another --out")


def with_lora(base, lora, base_name: str):
    """A copy of `base` with the LoRA `lora` (a kohya / diffusers .safetensors file, a LoRA folder or a LoRA run's
    folder) fused into it; a ValueError when it does not fit `base` or changes none of its weights."""
    path = Path(lora)
    if path.is_dir() and (path / "lora").is_dir():
        path = path / "lora"  # a LoRA run's folder keeps its adapter in lora/
    if not path.exists():
        raise ValueError(f"--lora {str(lora)!r} does not exist (from {Path.cwd()}); pass a kohya .safetensors file or "
                         "a LoRA folder (unlearnkit export --format kohya | lora)")
    from diffusers.utils import logging as dlog

    pipe = copy.deepcopy(base)
    verbosity = dlog.get_verbosity()
    dlog.set_verbosity(dlog.CRITICAL)  # diffusers logs a misfit LoRA's every layer before it raises: the error says it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe.load_lora_weights(str(path))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    except Exception as e:  # diffusers and peft raise several types for a LoRA of another model
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        why = next((line for line in lines if line.startswith("size mismatch")), lines[0])  # torch's first misfit
        raise ValueError(f"--lora {str(lora)!r} does not fit BASE {base_name!r}: {why}") from e
    finally:
        dlog.set_verbosity(verbosity)
    if pipeline_fingerprint(pipe) == pipeline_fingerprint(base):
        raise ValueError(f"--lora {str(lora)!r} changed no weight of BASE {base_name!r}: its layer names are another "
                         "model's; pass the base it was trained on")
    return pipe


def check_compatible(base, edited, base_name: str, edited_name: str) -> None:
    """A ValueError naming both inputs when their images cannot be compared pair by pair: another UNet space
    (pixels vs latents, another size) or another architecture."""
    a, b = (("latent" if is_latent(p) else "pixel", *sample_shape(p)) for p in (base, edited))
    if a != b:
        raise ValueError(f"BASE {base_name!r} and EDITED {edited_name!r} do not match: their UNets work in {a[0]} "
                         f"space {a[1:]} and {b[0]} space {b[1:]}; compare an edited model with the base it came from")
    diff = [k for k in ARCHITECTURE if base.unet.config.get(k) != edited.unet.config.get(k)]
    if diff:
        k = diff[0]
        raise ValueError(f"BASE {base_name!r} and EDITED {edited_name!r} do not match: another architecture "
                         f"(UNet {k} {base.unet.config.get(k)} vs {edited.unet.config.get(k)}); compare an edited "
                         "model with the base it came from")
    if is_latent(base):
        sa, sb = (tuple(p.vae.config.get("block_out_channels", ())) for p in (base, edited))
        if sa != sb:
            raise ValueError(f"BASE {base_name!r} and EDITED {edited_name!r} do not match: another VAE "
                             f"(block_out_channels {sa} vs {sb})")
