"""Benchmarks, measured side by side in one run (ratios, not absolute times: the machine is noisy).

    python bench/run.py [--quick] [--model base|tiny] [--device cpu|cuda] [--compile MODE]

1. Step throughput of every method in the kit's loop vs a naive reference loop written here: the
   text encoder run every step, separate fp32 UNet calls for each frozen target and each example
   (no batching, no caching). `step_speedup_min` is the smallest kit/naive ratio over methods.
2. Evaluation of a second model against the same base with the base-image cache vs without
   (`eval_cache_ratio` = time with / time without).
3. Sampling images/s, peak memory (RSS on CPU, CUDA peak on GPU).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import shutil
import sys
import tempfile
import time

import torch

import unlearnkit as uk
from unlearnkit import losses
from unlearnkit.backbone import encode_images, pipeline_device, training_scheduler
from unlearnkit.data import training_data
from unlearnkit.methods import make_config
from unlearnkit.models import build_pipeline, resolve_device

METHODS = ("ga", "esd-x", "salun", "sa", "saddle", "ovw")


def naive_steps(pipe, task, method, steps, batch_size, data):
    """A straightforward loop: no cached embeddings, one frozen-UNet call per target and per example."""
    base, unet = pipe.unet, copy.deepcopy(pipe.unet).train().requires_grad_(True)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-5)
    sched = training_scheduler(pipe)
    device = pipeline_device(pipe)
    fp, fi = data["forget"]
    rp, ri = data["retain"]
    ap, _ = data.get("anchor", (fp, fi))
    g = torch.Generator().manual_seed(0)

    def embed(prompts):
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids.to(device)
        return pipe.text_encoder(ids)[0]

    def noisy(images, idx):
        x0 = encode_images(pipe, images[idx])
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (len(idx),), generator=g).to(device)
        # the regression target: ε, or v for a v-prediction model (the embedded base, SD 2.x)
        target = sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        return sched.add_noise(x0, noise, t), target, t

    def frozen(x, t, e):
        with torch.no_grad():
            return torch.cat([base(x[i:i + 1], t[i:i + 1], e[i:i + 1]).sample for i in range(len(x))])

    start = time.time()
    for _ in range(steps):  # (on CUDA, loss.backward and opt.step queue work; the final sync below times it)
        idx = torch.randint(0, len(fp), (batch_size,), generator=g)
        x_t, y, t = noisy(fi, idx)
        e_f = embed([fp[i] for i in idx])
        e_null = embed([""] * batch_size)
        pred = unet(x_t, t, e_f).sample
        if method == "ga":
            loss = losses.ga_loss(pred, y)
        elif method == "esd-x":
            loss = losses.regression_loss(pred, losses.esd_target(frozen(x_t, t, e_null), frozen(x_t, t, e_f), 1.0))
        elif method == "salun":
            with torch.no_grad():
                target = torch.cat([unet(x_t[i:i + 1], t[i:i + 1], e_null[i:i + 1]).sample for i in range(batch_size)])
            ridx = torch.randint(0, len(rp), (batch_size,), generator=g)
            rx, rn, rt = noisy(ri, ridx)
            loss = losses.salun_loss(pred, target, unet(rx, rt, embed([rp[i] for i in ridx])).sample, rn, 0.5)
        elif method == "sa":
            ridx = torch.randint(0, len(rp), (batch_size,), generator=g)
            rx, rn, rt = noisy(ri, ridx)
            loss = losses.simple_loss(pred, y) + losses.simple_loss(unet(rx, rt, embed([rp[i] for i in ridx])).sample, rn)
        else:  # saddle and ovw: a help loss on retain data, each target its own call
            if method == "ovw":
                loss = losses.regression_loss(pred, frozen(x_t, t, embed([ap[i] for i in idx])))
            else:
                loss = -losses.simple_loss(pred, y)
            ridx = torch.randint(0, len(rp), (batch_size,), generator=g)
            rx, _, rt = noisy(ri, ridx)
            e_r = embed([rp[i] for i in ridx])
            loss = loss + losses.help_loss(unet(rx, rt, e_r).sample, frozen(rx, rt, e_r),
                                           unet(rx, rt, e_null).sample, frozen(rx, rt, e_null))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.time() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and prompts (a few minutes)")
    ap.add_argument("--model", default="base", help="'base' (the shipped model) or 'tiny' (random)")
    ap.add_argument("--device", default="auto", help="cpu or cuda (default: cuda when there is a GPU)")
    ap.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                    help="the kit's loop runs its UNet passes through torch.compile with this mode")
    args = ap.parse_args(argv)
    steps, batch = (12, 4) if args.quick else (30, 8)
    device = resolve_device(args.device)
    pipe = uk.load_base(device=device) if args.model == "base" else build_pipeline("tiny").to(device)
    task = uk.get_task("object").head(6, 12)
    cache = tempfile.mkdtemp()
    data = training_data(pipe, task, make_config("ovw", data_steps=10, data_seeds=1), cache_dir=cache, progress=False)
    rows, ratios = [], {}
    for m in METHODS:
        overrides = dict(steps=steps, batch_size=batch, data_steps=10, data_seeds=1, params="full")
        # warm-up (caches; with --compile, the compilation: 3 steps, CUDA graphs record after the first ones)
        uk.unlearn(pipe, task, m, cache_dir=cache, progress=False, compile=args.compile,
                   **{**overrides, "steps": 3 if args.compile else 1})
        # the loop's own time (UnlearnResult.seconds): the one-off work before it (data encoding, SalUn's mask,
        # SA's Fisher) is not step throughput, and the naive loop's setup is not timed either
        kit = steps / uk.unlearn(pipe, task, m, cache_dir=cache, progress=False, compile=args.compile,
                                 **overrides).seconds
        naive = naive_steps(pipe, task, m, steps, batch, data)
        ratios[m] = kit / naive
        rows.append(f"| {m} | {kit:.2f} | {naive:.2f} | {ratios[m]:.2f} |")
    # evaluation with and without the base-image cache
    seeds = [0] if args.quick else [0, 1]
    second = uk.unlearn(pipe, task, "esd-x", steps=2, cache_dir=cache, progress=False, data_steps=10, data_seeds=1).pipeline
    lp = uk.evaluation.LPIPSDistance()
    kw = dict(seeds=seeds, steps=10, fid=False, lpips=lp)
    ecache = tempfile.mkdtemp()
    first = uk.unlearn(pipe, task, "ga", steps=2, cache_dir=cache, progress=False, data_steps=10, data_seeds=1).pipeline
    uk.evaluate(pipe, first, task, cache_dir=ecache, **kw)  # fills the base-image cache
    times = {"with": [], "without": []}
    for _ in range(2):  # alternated, best of two each: this machine's timings wander by ~10%
        # each timed run with the cache starts from a copy holding only the base's (and the first model's) images
        fresh = shutil.copytree(ecache, tempfile.mkdtemp() + "/cache")
        for label, where in (("with", fresh), ("without", False)):
            t = time.time()
            uk.evaluate(pipe, second, task, cache_dir=where, **kw)
            times[label].append(time.time() - t)
    with_cache, without = min(times["with"]), min(times["without"])
    # sampling speed
    prompts = task.retain_prompts[:8]
    t = time.time()
    uk.sample(pipe, prompts, [0, 1], steps=20, guidance_scale=2.0)
    ips = 2 * len(prompts) / (time.time() - t)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {gpu}, "
          f"torch {torch.__version__}")
    print("| method | kit steps/s | naive steps/s | ratio |\n|---|---|---|---|\n" + "\n".join(rows))
    print(f"evaluation (best of 2): {with_cache:.1f}s with the base-image cache, {without:.1f}s without")
    print(f"sampling: {ips:.2f} images/s (20 DDIM steps, guidance 2); peak memory {peak:.0f} MiB")
    print(json.dumps({"step_speedup_min": round(min(ratios.values()), 3), "step_speedup": {k: round(v, 3) for k, v in ratios.items()},
                      "eval_cache_ratio": round(with_cache / without, 3), "sampling_images_per_s": round(ips, 3),
                      "peak_memory_mib": round(peak), "model": args.model, "quick": args.quick, "device": str(device),
                      "compile": args.compile}))


if __name__ == "__main__":
    sys.exit(main())
