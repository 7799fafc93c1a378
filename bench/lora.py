"""LoRA vs full weights on the embedded tasks (`cpu` profile, each method's tuned config), and their memory.

    python bench/lora.py [--tasks object,style] [--methods esd-x,salun,ovw] [--out bench/lora.json]

For each task × method × {full, lora}: LPIPS_ret [95% CI], forget rate, the loop's seconds and the trained
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
from unlearnkit.experiments import profile, run_method
from unlearnkit.io import atomic_write
from unlearnkit.metrics import LPIPSDistance, format_ci

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="object,style")
    ap.add_argument("--methods", default="esd-x,salun,ovw")
    ap.add_argument("--out", default="bench/lora.json")
    args = ap.parse_args(argv)
    P, base, lpips = profile("cpu"), uk.load_base(device="cpu"), LPIPSDistance()
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["task"], r["method"], r["params"]) for r in rows}
    for task_name in args.tasks.split(","):
        task = P.task(task_name)
        for method in args.methods.split(","):
            for params in ("full", "lora"):
                if (task_name, method, params) in done:
                    continue
                run = run_method(base, task, method, P, **({"params": "lora"} if params == "lora" else {}))
                r = uk.evaluate(base, run.pipeline, task, lpips=lpips, progress=False, **P.evaluation)
                rows.append({"task": task_name, "method": method, "params": params, "lpips_ret": r["lpips_ret"],
                             "lpips_ret_ci": r["lpips_ret_ci"], "forget_rate": r["forget_rate"],
                             "retain_accuracy": r["retain_accuracy"], "loop_seconds": run.seconds,
                             "trained_parameters": trained_parameters(run)})
                print(json.dumps(rows[-1]), flush=True)
                atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps({"rows": rows}, indent=1)))
    memory = {}
    for params in ("full", "lora"):  # each in a fresh process: ru_maxrss is a high-water mark
        res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, params, str(Path(args.out).parent / ".lora-cache")],
                             capture_output=True, text=True, check=True)
        memory[params] = float(res.stdout.strip().splitlines()[-1])
    print(json.dumps({"peak_rss_mib": memory}))
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps({"rows": rows, "peak_rss_mib_ovw_object": memory,
                                                                    "profile": "cpu"}, indent=1)))
    print("| task | method | params | LPIPS_ret [95% CI] | forget rate | accuracy | loop s | trained params |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(f"| {r['task']} | {r['method']} | {r['params']} | {format_ci(r['lpips_ret'], r['lpips_ret_ci'])} | "
                    f"{r['forget_rate']:.2f} | {r['retain_accuracy']:.3f} | {r['loop_seconds']:.1f} | "
                    f"{r['trained_parameters']:,} |" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
