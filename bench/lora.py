"""LoRA vs full weights on the embedded tasks (`cpu` profile, each method's tuned config), and their memory.

    python bench/lora.py [--tasks object,style] [--methods esd-x,salun,ovw] [--out bench/lora.json]

First the learning-rate rule (`experiments.LORA_LR_MULT`): at the full-weight learning rates LoRA does not forget
(forget rate 1.00 for all three on the object task), so each method's LoRA run gets its tuned lr × m for
m in LR_MULTS on the object task (the same budget for all three), and each method's m is picked by bench/tune.py's
rule: the lowest LPIPS_ret among the m that forget (forget rate <= 0.2). Then for each task × method × {full, lora}
(LoRA at the method's m): LPIPS_ret [95% CI], forget rate, the loop's seconds and the trained
parameter count; then the peak RSS of one full and one LoRA run of OVW, each in a fresh process. Runs go
through `run_method`'s cache, so an interrupted sweep resumes; results are written as they come (atomically).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import unlearnkit as uk
from unlearnkit.experiments import LORA_LR_MULT, profile, run_method, tuned
from unlearnkit.methods import make_config
from unlearnkit.io import atomic_write
from unlearnkit.evaluation import LPIPSDistance, format_ci

MEMORY_PROBE = """
import resource, sys, unlearnkit as uk
from unlearnkit.experiments import profile
P = profile("cpu")
base = uk.load_base(device="cpu")
uk.unlearn(base, P.task("object"), "ovw", progress=False, cache_dir=sys.argv[2], **{**P.method_overrides,
           **({"params": "lora"} if sys.argv[1] == "lora" else {})})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def trained_parameters(run) -> int:
    if run.lora is not None:
        return sum(v.numel() for v in run.lora.values())
    before = uk.load_base(device="cpu").unet.state_dict()
    return sum(p.numel() for n, p in run.pipeline.unet.named_parameters() if not p.equal(before[n]))


LR_MULTS = (10.0, 30.0, 100.0)


def lora_lr(task, method, P, mult):
    """The LoRA run's learning rate: the method's tuned (or default) full-weight lr × mult."""
    return mult * make_config(method, **{**P.method_overrides, **tuned(task.name, method, task.kind)}).lr


def pick_mult(rows) -> float:
    """One method's sweep rows -> its multiplier: bench/tune.py's rule (lowest LPIPS_ret among those that forget,
    else the lowest forget rate)."""
    from tune import pick

    return pick(rows)["lr_mult"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="object,style")
    ap.add_argument("--methods", default="esd-x,salun,ovw")
    ap.add_argument("--out", default="bench/lora.json")
    args = ap.parse_args(argv)
    P, base, lpips = profile("cpu"), uk.load_base(device="cpu"), LPIPSDistance()
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {}
    rows, sweep = saved.get("rows", []), saved.get("lr_sweep", [])

    def save(**more):
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps({**saved, "rows": rows, "lr_sweep": sweep, **more},
                                                                      indent=1)))

    # the learning-rate rule, on the object task
    task = P.task("object")
    for method in args.methods.split(","):
        for mult in LR_MULTS:
            if any(r["method"] == method and r["lr_mult"] == mult for r in sweep):
                continue
            run = run_method(base, task, method, P, params="lora", lr=lora_lr(task, method, P, mult))
            r = uk.evaluate(base, run.pipeline, task, lpips=lpips, progress=False, **P.evaluation)
            sweep.append({"method": method, "lr_mult": mult, "lr": run.config.lr, "lpips_ret": r["lpips_ret"],
                          "lpips_ret_ci": r["lpips_ret_ci"], "forget_rate": r["forget_rate"]})
            print(json.dumps(sweep[-1]), flush=True)
            save()
    mults = {m: pick_mult([r for r in sweep if r["method"] == m]) for m in args.methods.split(",")}
    print(f"LoRA lr rule, per method: {mults} (experiments.LORA_LR_MULT = {LORA_LR_MULT})")
    rows = [r for r in rows if r["params"] == "full" or r.get("lr_mult") == mults.get(r["method"])]
    done = {(r["task"], r["method"], r["params"]) for r in rows}
    for task_name in args.tasks.split(","):
        task = P.task(task_name)
        for method in args.methods.split(","):
            for params in ("full", "lora"):
                if (task_name, method, params) in done:
                    continue
                mult = mults[method]
                lora = {"params": "lora", "lr": lora_lr(task, method, P, mult)} if params == "lora" else {}
                run = run_method(base, task, method, P, **lora)
                r = uk.evaluate(base, run.pipeline, task, lpips=lpips, progress=False, **P.evaluation)
                rows.append({"task": task_name, "method": method, "params": params, "lpips_ret": r["lpips_ret"],
                             "lpips_ret_ci": r["lpips_ret_ci"], "forget_rate": r["forget_rate"],
                             "retain_accuracy": r["retain_accuracy"], "loop_seconds": run.seconds,
                             "trained_parameters": trained_parameters(run), **({"lr_mult": mult} if lora else {})})
                print(json.dumps(rows[-1]), flush=True)
                save()
    memory = {}
    for params in ("full", "lora"):  # each in a fresh process: ru_maxrss is a high-water mark
        res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, params, str(Path(args.out).parent / ".lora-cache")],
                             capture_output=True, text=True, check=True)
        memory[params] = float(res.stdout.strip().splitlines()[-1])
    print(json.dumps({"peak_rss_mib": memory}))
    save(peak_rss_mib_ovw_object=memory, profile="cpu", lr_mult=mults)
    print("| task | method | params | LPIPS_ret [95% CI] | forget rate | accuracy | loop s | trained params |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(f"| {r['task']} | {r['method']} | {r['params']} | {format_ci(r['lpips_ret'], r['lpips_ret_ci'])} | "
                    f"{r['forget_rate']:.2f} | {r['retain_accuracy']:.3f} | {r['loop_seconds']:.1f} | "
                    f"{r['trained_parameters']:,} |" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
