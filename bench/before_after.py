"""Each baseline before and after it became its authors', at the same configs, from bench/tune-{object,style}.json.

    python bench/before_after.py

"Before": the rows measured with the kit's earlier variants (ESD x_t="data", ESD-u all but attn2, SalUn's conditional
mask on 4 random batches and random relabel, SA's one-t Fisher with Adam and clipping), rows without a "code" key,
cpu profile. "After": rows with the method's current code hash (`methods.method_code_hash`), cpu profile with its
per-method settings (ESD's chain of 10 DDIM steps, SA's Fisher from 4 examples). LPIPS_ret [95% CI] / forget rate /
retain accuracy; the same evaluation as Table 1 (40 retain prompts × seed 0, 10 DDIM steps).
"""

import json
from pathlib import Path

from unlearnkit.methods import method_code_hash

GRIDS = {"esd-x": [{}, {"lr": 1e-4}, {"lr": 1e-3}], "salun": [{}, {"lr": 3e-5}, {"lr": 3e-4}],
         "sa": [{}, {"lr": 3e-5}, {"lr": 3e-4}]}
NEW = ("uce", "ca", "ca-noise", "fmn")
CPU = {"data_steps": 10, "steps": 50}


def fmt(r):
    if r is None:
        return "not run"
    lo, hi = r["lpips_ret_ci"]
    return f"{r['lpips_ret']:.3f} [{lo:.3f}, {hi:.3f}] / {r['forget_rate']:.2f} / {r['retain_accuracy']:.3f}"


def main():
    for task in ("object", "style"):
        rows = json.loads(Path(f"bench/tune-{task}.json").read_text())

        def find(m, cfg, after):
            for r in rows:
                if r["method"] != m or r["overrides"] != cfg or r["profile"].get("method_overrides") != CPU:
                    continue
                if after and r.get("code") == method_code_hash(m):
                    return r
                if not after and "code" not in r and "method_settings" not in r["profile"]:
                    return r
            return None

        print(f"\n{task}: | method | config | before | after | train s (after) |\n|---|---|---|---|---|")
        for m, cfgs in GRIDS.items():
            for cfg in cfgs:
                after = find(m, cfg, True)
                secs = f"{after['train_seconds']:.0f}" if after else ""
                print(f"| {m} | {cfg or 'default'} | {fmt(find(m, cfg, False))} | {fmt(after)} | {secs} |")
        for m in NEW:
            for r in rows:
                if r["method"] == m and r.get("code") == method_code_hash(m):
                    print(f"| {m} | {r['overrides'] or 'default'} | — | {fmt(r)} | {r['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
