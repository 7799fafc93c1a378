"""The cost of each method in the kit, on one machine: wall seconds, peak memory, weights changed.

    python bench/cost.py [--task object] [--profile cpu] [--methods esd-x,salun,...] [--out bench/cost-object.json]

Each method runs in a process of its own (so its peak resident memory is its own) with the profile's settings and
the task's tuned config, exactly as `run_method` trains it for Table 1, on base images already in the disk cache
(generated once, before the first method: data generation is common to all and not counted; nothing else is read
from the cache: SA's Fisher is computed in the run). Seconds: the whole
`unlearn` call (prepare — SalUn's mask, SA's Fisher, UCE's edit — and the loop). UnlearnCanvas reports ESD 6163 s
and SalUn 667 s on SD-1.x (A100); these are the embedded model's figures on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
import unlearnkit as uk
from unlearnkit.experiments import profile
from unlearnkit.experiments.cache import _settings
from unlearnkit.methods import canonical
torch.set_num_threads(2)
task_name, prof, method = sys.argv[1:4]
P = profile(prof)
task = P.task(task_name)
base = uk.load_base(device="cpu")
settings = _settings(task, canonical(method), P, True, {})
# a fresh cache that shares only the base images: SA's Fisher (cached on disk by the kit) is computed and counted
import os, tempfile
from pathlib import Path
from unlearnkit.data import default_cache_dir
cache = Path(tempfile.mkdtemp(prefix="cost-cache-"))
(default_cache_dir() / "samples").mkdir(parents=True, exist_ok=True)
os.symlink(default_cache_dir() / "samples", cache / "samples")
start = time.time()
run = uk.unlearn(base, task, method, progress=False, cache_dir=cache, **settings)
seconds = time.time() - start
changed = sum(int((p != q).sum()) for p, q in zip(base.unet.parameters(), run.pipeline.unet.parameters()))
total = sum(p.numel() for p in base.unet.parameters())
print(json.dumps({"method": method, "seconds": round(seconds, 1), "loop_seconds": round(run.seconds, 1),
                  "steps": len(run.history), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "weights_changed": changed, "weights_total": total, "settings": settings}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="object")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--methods", default="esd-x,salun,sa,saddle,ovw,ovw-nohelp,uce,ca,ca-noise,fmn")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or f"bench/cost-{args.task}.json")
    rows = json.loads(out.read_text()) if out.exists() else []
    for m in args.methods.split(","):
        if any(r["method"] == m for r in rows):
            continue
        done = subprocess.run([sys.executable, "-c", CHILD, args.task, args.profile, m], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{m}: {done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        out.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    print("| method | seconds (prepare + loop) | loop | steps | peak memory (MiB) | weights changed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']} | {r['loop_seconds']} | {r['steps']} | {r['peak_rss_mib']} | "
              f"{r['weights_changed']:,} of {r['weights_total']:,} ({r['weights_changed'] / r['weights_total']:.1%}) |")


if __name__ == "__main__":
    main()
