"""One prepared GPU check: ESD-x for 200 steps in bf16 on a Stable-Diffusion-1.x-shaped pipeline with
random weights at 512 px (64x64 latents), timed, with peak memory and a FLOP count per step.

    python bench/gpu_check.py            # on a GPU machine (about 2-4 minutes on an H100/H200)
    python bench/gpu_check.py --tiny     # the same code path on a CPU in seconds (used by the tests)

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

import unlearnkit as uk
from unlearnkit.sd import build_tiny_sd

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak, FLOP/s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny pipeline on the CPU, 2 steps: checks the code path")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no GPU here; run with --tiny to check the code path on a CPU")
    steps = 2 if args.tiny else args.steps
    task = uk.get_task("sd-vangogh")
    words = task.forget_prompts + task.retain_prompts + task.anchor_prompts + [""]
    pipe = build_tiny_sd(words, image_size=32 if args.tiny else 512, shape="tiny" if args.tiny else "sd15").to(device)
    small = uk.Task(name="gpu-check", forget_prompts=task.forget_prompts[:4], retain_prompts=task.retain_prompts[:4],
                    anchor_prompts=task.anchor_prompts[:4])
    kw = dict(steps=steps, batch_size=1, lr=1e-5, data_steps=2, data_seeds=1, mixed_precision="no" if args.tiny else "bf16",
              cache_dir=tempfile.mkdtemp(), progress=False)
    # FLOPs of one training step: a 2-step call minus a 1-step call (the data is cached by then)
    from torch.utils.flop_counter import FlopCounterMode

    uk.unlearn(pipe, small, "esd-x", **{**kw, "steps": 1})  # generates and caches the data
    counts = []
    for n in (1, 2):
        counter = FlopCounterMode(display=False)
        with counter:
            uk.unlearn(pipe, small, "esd-x", **{**kw, "steps": n})
        counts.append(counter.get_total_flops())
    flops_per_step = counts[1] - counts[0]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.time()
    result = uk.unlearn(pipe, small, "esd-x", **kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = result.seconds
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    out = {"device": name, "steps": steps, "seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 3),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
           "flops_per_step": flops_per_step, "wall_s_including_data": round(time.time() - t, 1),
           "unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1)}
    if peak:
        out["fraction_of_bf16_peak"] = round(flops_per_step * steps / seconds / peak, 4)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
