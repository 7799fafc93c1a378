"""SA's Fisher: the kit's earlier one-t estimate against its authors' definition, and what λ·EWC then weighs.

    python bench/sa_fisher.py [--task object] [--examples 2] [--out bench/sa_fisher.json]

1. Fisher mass Σ_i F_i on the same replay examples of the embedded base: `fisher="one-t"` (the squared gradient
   at one random t) and `fisher="reference"` (the squared gradient of the loss summed over all 1000 timesteps,
   clear-nus/selective-amnesia ddpm_fim.py lines 347-396, commit b736571).
2. λ·EWC as a share of SA's loss over a run, for both, at the cpu profile's settings (run_method: the runs Table 1
   uses; cached).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.experiments import profile, run_method


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="object")
    ap.add_argument("--examples", type=int, default=2)
    ap.add_argument("--out", default="bench/sa_fisher.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    P = profile("cpu")
    base, task = uk.load_base(device="cpu"), P.task(args.task)
    out = {"task": args.task, "examples": args.examples, "mass": {}, "seconds": {}, "ewc_share": {}}
    for fisher in ("one-t", "reference"):
        start = time.time()
        run = uk.unlearn(base, task, "sa", progress=False, fisher=fisher, fisher_samples=args.examples,
                         cache_dir=False, **P.method_overrides | {"steps": 1})
        out["seconds"][fisher] = round(time.time() - start, 1)
        out["mass"][fisher] = sum(float(f.double().sum()) for f in run.state["fisher"])
        print(fisher, out["mass"][fisher], out["seconds"][fisher], flush=True)
    out["mass_ratio"] = out["mass"]["reference"] / out["mass"]["one-t"]
    for fisher in ("one-t", "reference"):
        run = run_method(base, task, "sa", P, progress=False, **({"fisher": fisher} if fisher == "one-t" else {}))
        lam = run.config.lam
        shares = [lam * h["ewc"] / h["loss"] for h in run.history]
        out["ewc_share"][fisher] = {"first": shares[0], "max": max(shares), "last": shares[-1],
                                    "config": {"lr": run.config.lr, "steps": run.config.steps}}
        print(fisher, out["ewc_share"][fisher], flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
