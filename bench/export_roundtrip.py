"""Every export format, loaded the way its users load it — plain diffusers in another process, never importing the
kit — against the in-memory model it came from: the max abs image difference, and the SVD's error for a LoRA taken
from a full-weight run.

    python bench/export_roundtrip.py [--shape sd15-narrow] [--out DIR] [--ranks 4,16,64]
    python bench/export_roundtrip.py --bad-inputs     # what `unlearnkit export` says to each mistake; files untouched

On a tiny Stable Diffusion of SD-1.x's layout (`sd15-narrow`, random weights, 64 px): a full-weight "run" (the base
with every cross-attention to_k / to_v and one convolution changed by a rank-8 update, and a bias nudged, which no
LoRA carries: the images are compared with the run and with the run without that bias change) and a LoRA run (rank 4,
alpha 8). Each is exported by `unlearnkit.export` and opened in a subprocess by diffusers alone:
`StableDiffusionPipeline.from_pretrained` (diffusers folder, and the run folder's `pipeline/` as
`unlearnkit unlearn` writes it), `from_single_file(file, config=base folder)` (single-file), `load_lora_weights`
on the base (lora, kohya, and the LoRA extracted from the full-weight run at each rank). Images: the pipeline's own
`__call__`, 2 DDIM steps, seed 0, in [0, 1].
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

PROMPTS = ["a photo of a cat", "a photo of a dog"]

# run by a bare interpreter: diffusers and torch only
CHILD = r"""
import json, sys, torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
kind, base, target, out = sys.argv[1:5]
if kind == "folder":
    pipe = StableDiffusionPipeline.from_pretrained(target)
elif kind == "single-file":
    pipe = StableDiffusionPipeline.from_single_file(target, config=base, local_files_only=True)
else:  # a LoRA on the base
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(target)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
images = pipe(PROMPTS, num_inference_steps=2, guidance_scale=2.0, height=64, width=64, output_type="pt",
              generator=torch.Generator().manual_seed(0)).images
torch.save({"images": images, "unlearnkit": "unlearnkit" in sys.modules,
            "safety_checker": pipe.safety_checker is not None}, out)
""".replace("PROMPTS", repr(PROMPTS))


def images(pipe) -> torch.Tensor:
    from diffusers import DDIMScheduler

    pipe = copy.copy(pipe)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, num_inference_steps=2, guidance_scale=2.0, height=64, width=64, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def full_weight_run(base):
    """The base with a rank-8 change on every cross-attention to_k / to_v and on one 3x3 convolution, and one bias
    nudged (a LoRA cannot carry it): what a full-weight run's UNet differs by, with a known rank."""
    pipe = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")) or name == "down_blocks.0.resnets.0.conv1":
                w = module.weight
                flat = w.flatten(1)
                update = torch.randn(flat.shape[0], 8, generator=gen) @ torch.randn(8, flat.shape[1], generator=gen)
                w += (0.05 * update / update.norm() * flat.norm()).reshape(w.shape)
        pipe.unet.conv_in.bias += 1e-3
    return pipe


def lora_run(base):
    from peft import LoraConfig, get_peft_model_state_dict

    unet = copy.deepcopy(base.unet)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v",
                                                                                        "to_out.0"])
    unet.add_adapter(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    lora = get_peft_model_state_dict(unet)
    unet.fuse_lora()
    unet.unload_lora()
    return SimpleNamespace(pipeline=type(base)(**{**base.components, "unet": unet}), lora=lora, lora_config=config)


def measure(shape="sd15-narrow", out_dir=None, ranks=(4, 16, 64)) -> list[dict]:
    import unlearnkit as uk
    from unlearnkit.lora_extract import extract_lora
    from unlearnkit.sd import build_tiny_sd

    work = Path(out_dir or tempfile.mkdtemp(prefix="export-roundtrip-"))
    base = build_tiny_sd(PROMPTS, image_size=64, shape=shape)
    base.save_pretrained(work / "base")
    full, lora = full_weight_run(base), lora_run(base)
    jobs = []  # (row, kind, target, the in-memory model it must match)
    uk.export(full, work / "diffusers")
    jobs.append(({"format": "diffusers", "from": "full-weight run"}, "folder", work / "diffusers", full))
    full.save_pretrained(work / "run" / "pipeline")  # what `unlearnkit unlearn --out run` writes (export.save_diffusers)
    jobs.append(({"format": "run folder pipeline/", "from": "full-weight run"}, "folder", work / "run" / "pipeline",
                 full))
    uk.export(full, work / "model.safetensors", format="single-file")
    jobs.append(({"format": "single-file", "from": "full-weight run"}, "single-file", work / "model.safetensors", full))
    uk.export(full, work / "model-fp16.safetensors", format="single-file", dtype="fp16")
    jobs.append(({"format": "single-file fp16", "from": "full-weight run"}, "single-file",
                  work / "model-fp16.safetensors", full))
    uk.export(lora, work / "lora", format="lora")
    jobs.append(({"format": "lora", "from": "LoRA run"}, "lora", work / "lora", lora.pipeline))
    uk.export(lora, work / "kohya.safetensors", format="kohya")
    jobs.append(({"format": "kohya", "from": "LoRA run"}, "lora", work / "kohya.safetensors", lora.pipeline))
    carried = copy.deepcopy(full)  # what a LoRA can carry of the run: all but the bias
    with torch.no_grad():
        carried.unet.conv_in.bias.copy_(base.unet.conv_in.bias)
    for r in ranks:
        state, config, report = extract_lora(base, full, rank=r)
        extracted = SimpleNamespace(pipeline=full, lora=state, lora_config=config)
        for fmt, target in (("lora", work / f"svd-{r}"), ("kohya", work / f"svd-{r}.safetensors")):
            uk.export(extracted, target, format=fmt)
            jobs.append(({"format": f"{fmt} from full (SVD rank {r})", "from": "full-weight run",
                          "svd_relative_error": report.relative_error, "not_carried": report.not_carried,
                          "carried": carried}, "lora", target, full))
    rows = []
    for row, kind, target, model in jobs:
        got = work / "child.pt"
        done = subprocess.run([sys.executable, "-c", CHILD, kind, str(work / "base"), str(target), str(got)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{row['format']}: {done.stderr[-2000:]}")
        child = torch.load(got)
        row.update(max_abs_diff=float((child["images"] - images(model)).abs().max()),
                   child_imported_unlearnkit=child["unlearnkit"])
        if "carried" in row:  # against the run without the bias a LoRA has no place for
            row["max_abs_diff_carried"] = float((child["images"] - images(row.pop("carried"))).abs().max())
        rows.append(row)
    return rows


def bad_inputs(work: Path) -> list[dict]:
    """Each mistake a user may make with `unlearnkit export`, against a LoRA run folder, a user's folder and an older
    file: the one line it prints, its exit code, and whether every file stayed as it was."""
    import contextlib
    import io

    import unlearnkit as uk
    from unlearnkit.app.cli import main
    from unlearnkit.models import build_pipeline

    base = build_pipeline("tiny", seed=0)
    run = lora_run(base)
    folder = work / "run"
    run.pipeline.save_pretrained(folder / "pipeline")
    uk.export(run, folder / "lora", format="lora")
    (folder / "checkpoint.pt").write_bytes(b"the run's checkpoint")
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("a user's file")
    (work / "old.safetensors").write_bytes(b"an older kohya file")
    (work / "full").mkdir()
    base.save_pretrained(work / "full" / "pipeline")  # a full-weight run folder that records no base

    def snapshot():
        return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}

    cases = [["run", "--out", "run"], ["run", "--out", "run", "--overwrite"], ["run", "--out", ".", "--overwrite"],
             ["run/pipeline", "--out", "run/pipeline", "--overwrite"], ["run", "--out", "mine"],
             ["run", "--out", "run/lora", "--format", "lora"], ["run", "--out", "old.safetensors", "--format", "kohya"],
             ["run", "--out", "model.safetensors"], ["run", "--out", "mine", "--format", "kohya"],
             ["run", "--out", "model.ckpt", "--format", "single-file"], ["missing", "--out", "x"],
             ["run", "--out", "x", "--dtype", "int8"], ["full", "--out", "l", "--format", "lora"]]
    rows, before = [], snapshot()
    for case in cases:
        argv = ["export", *[str(work / a) if i in (0, 2) else a for i, a in enumerate(case)]]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's own refusals (an unknown choice)
                code = e.code
        line = err.getvalue().strip().splitlines()[-1].replace(str(work) + "/", "").replace(str(work), ".")
        rows.append({"input": "unlearnkit export " + " ".join(case), "exit": code, "says": line,
                     "one line": err.getvalue().strip().count("\n") == 0, "files untouched": snapshot() == before})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="sd15-narrow")
    ap.add_argument("--out", default=None, help="folder for the exported files (default: a temp folder)")
    ap.add_argument("--ranks", default="4,16,64")
    ap.add_argument("--bad-inputs", action="store_true", help="print the bad-input table instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.bad_inputs:
        rows = bad_inputs(Path(args.out or tempfile.mkdtemp(prefix="export-bad-")))
        print("| input | exit | what it says (one line) | files untouched |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| `{r['input']}` | {r['exit']} | {r['says']} | {'yes' if r['files untouched'] else 'NO'} |")
        return
    rows = measure(args.shape, args.out, tuple(int(r) for r in args.ranks.split(",")))
    print("| format | from | max abs image difference | the same, vs the run without its bias change | SVD relative "
          "error |")
    print("|---|---|---|---|---|")
    for r in rows:
        svd = f"{r['svd_relative_error']:.2e}" if "svd_relative_error" in r else "—"
        carried = f"{r['max_abs_diff_carried']:.2e}" if "max_abs_diff_carried" in r else "—"
        print(f"| {r['format']} | {r['from']} | {r['max_abs_diff']:.2e} | {carried} | {svd} |")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
