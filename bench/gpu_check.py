"""One prepared GPU check: Stable Diffusion 1.x shapes (random weights) at 512 px under bf16 autocast.

    python bench/gpu_check.py              # on an H100 / H200: about 5-6 minutes, capped at 7.5 (the phase limits)
    python bench/gpu_check.py --dry-run    # the same code on the CPU in fp32: 64 px, 2 steps, SD 1.x's narrow shape

Phases, each under its own time limit (PHASE_LIMIT_S); a phase that fails or runs out of time records its
error and the next one still runs:
  setup    build the pipeline, move it to the GPU, generate and cache the training data (one 1-step run)
  flops    FLOPs of one ESD-x training step (forward + backward), counted by torch's FlopCounterMode
  esd-x    ESD-x, 1000 steps, x_t from the data, batch 1: seconds, steps/s, peak memory, fraction of the bf16 peak
  ovw      OVW on the whole UNet (with L_help), 100 steps: steps/s, peak memory
  ovw-gc   the same with gradient checkpointing
  esd-x-compiled  ESD-x as above with compile="reduce-overhead" (torch.compile + CUDA graphs): compile seconds
           (a 3-step run), then steps/s; the dry run takes the same path without compiling (minutes on a CPU;
           tests/test_train.py checks inductor on the CPU)
The last line printed is one JSON object; `--out FILE` also rewrites FILE after every phase, so a run that
dies (a killed process, a lost machine) still leaves the phases it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.sd import build_tiny_sd

# dense bf16 tensor-core peak in TFLOP/s, by a substring of torch.cuda.get_device_name(); the first match wins
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0)]
PHASE_LIMIT_S = {"setup": 60, "flops": 45, "esd-x": 120, "ovw": 35, "ovw-gc": 40, "esd-x-compiled": 150}  # 450 s in all
DRY_RUN_LIMIT_S = 600  # per phase on a (possibly shared) CPU
PROMPTS = 2  # forget / retain / anchor prompts of sd-vangogh used (one base image each)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError inside the block once `seconds` have passed (SIGALRM; main thread, Unix)."""
    def expire(signum, frame):
        raise TimeoutError(f"over its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cpu_attention_flops():
    """FlopCounterMode formulas for the CPU flash-attention kernels (torch's table has only the GPU ones), so a
    dry run counts attention as the GPU run does."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
                lambda grad, q, k, v, *a, **kw: sdpa_backward_flop_count(grad, q, k, v)}


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS if k in device_name), None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, fp32, 64 px, 2 steps per phase: checks the code path")
    ap.add_argument("--shape", default=None, help="build_tiny_sd shape (default: sd15; sd15-narrow with --dry-run)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    ap.add_argument("--out", default=None, help="also write the JSON here after every phase")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no GPU here; run with --dry-run to check the code path on the CPU")
    device = "cpu" if args.dry_run else "cuda"
    shape = args.shape or ("sd15-narrow" if args.dry_run else "sd15")
    image_size, esd_steps, ovw_steps = (64, 2, 2) if args.dry_run else (512, 1000, 100)
    cuda = device == "cuda"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_tflops(device_name, args.peak_tflops) if cuda else None

    t = uk.get_task("sd-vangogh")
    task = uk.Task(name="gpu-check", forget_prompts=t.forget_prompts[:PROMPTS],
                   retain_prompts=t.retain_prompts[:PROMPTS], anchor_prompts=t.anchor_prompts[:PROMPTS])
    common = dict(batch_size=1, lr=1e-5, data_steps=2, data_seeds=1, retain_seeds=1, progress=False,
                  mixed_precision="bf16" if cuda else "no", cache_dir=tempfile.mkdtemp(prefix="gpu_check-"))
    out = {"device": device_name, "shape": shape, "image_size": image_size, "dry_run": args.dry_run,
           "precision": "fp32 weights, bf16 autocast" if cuda else "fp32", "torch": torch.__version__,
           "peak_bf16_tflops": peak, "phases": {}}
    pipe, flops_per_step, start_all = None, None, time.time()

    def run(name, fn):
        # one phase: its own time limit and peak-memory window; an error is recorded and the next phase runs
        start = time.time()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        try:
            with time_limit(DRY_RUN_LIMIT_S if args.dry_run else PHASE_LIMIT_S[name]):
                result = fn()
        except Exception as e:  # noqa: BLE001 - a failed phase is a result too
            result = {"error": f"{type(e).__name__}: {e}"[:400]}
        if cuda:
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["wall_s"] = round(time.time() - start, 1)
        out["phases"][name] = result
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if args.out:
            Path(args.out).write_text(json.dumps(out) + "\n")
        print(f"gpu_check: {name}: {json.dumps(result)}", file=sys.stderr, flush=True)

    def setup():
        nonlocal pipe
        words = task.forget_prompts + task.retain_prompts + task.anchor_prompts + [""]
        pipe = build_tiny_sd(words, image_size=image_size, shape=shape).to(device)
        r = uk.unlearn(pipe, task, "esd-x", steps=1, x_t="data", **common)  # generates and caches the data; warms the kernels
        return {"unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1),
                "loss": r.history[-1]["loss"]}

    def flops():
        # one training step = a 2-step run minus a 1-step run (data loading, encoding and copies cancel out)
        nonlocal flops_per_step
        from torch.utils.flop_counter import FlopCounterMode

        counts = []
        for steps in (1, 2):
            counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_flops())
            with counter:
                uk.unlearn(pipe, task, "esd-x", steps=steps, **common)
            counts.append(counter.get_total_flops())
        flops_per_step = counts[1] - counts[0]
        return {"flops_per_step": flops_per_step}

    def esd_x():
        r = uk.unlearn(pipe, task, "esd-x", steps=esd_steps, x_t="data", **common)
        result = {"steps": esd_steps, "seconds": round(r.seconds, 2), "steps_per_s": round(esd_steps / r.seconds, 2),
                  "final_loss": r.history[-1]["loss"]}
        if peak and flops_per_step:
            result["tflops_per_s"] = round(flops_per_step * esd_steps / r.seconds / 1e12, 1)
            result["fraction_of_bf16_peak"] = round(flops_per_step * esd_steps / r.seconds / (peak * 1e12), 4)
        return result

    def ovw(checkpointing):
        def phase():
            r = uk.unlearn(pipe, task, "ovw", steps=ovw_steps, params="full", gradient_checkpointing=checkpointing,
                           **common)
            return {"steps": ovw_steps, "seconds": round(r.seconds, 2), "steps_per_s": round(ovw_steps / r.seconds, 2),
                    "final_loss": r.history[-1]["loss"]}
        return phase

    def esd_x_compiled():
        mode = None if args.dry_run else "reduce-overhead"
        t = time.time()
        uk.unlearn(pipe, task, "esd-x", steps=3, x_t="data", compile=mode, **common)  # compiles, records the graphs
        warm = time.time() - t
        r = uk.unlearn(pipe, task, "esd-x", steps=esd_steps, x_t="data", compile=mode, **common)
        return {"compile": mode, "warmup_s": round(warm, 1), "steps": esd_steps, "seconds": round(r.seconds, 2),
                "steps_per_s": round(esd_steps / r.seconds, 2), "final_loss": r.history[-1]["loss"]}

    run("setup", setup)
    if pipe is not None:
        run("flops", flops)
        run("esd-x", esd_x)
        run("ovw", ovw(False))
        run("ovw-gc", ovw(True))
        run("esd-x-compiled", esd_x_compiled)
    out["total_s"] = round(time.time() - start_all, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(out) + "\n")
    print(json.dumps(out))
    return 0 if all("error" not in p for p in out["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
