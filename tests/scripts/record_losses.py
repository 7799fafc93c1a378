"""Record the 3-step losses of the cases marked "re-record" in tests/data/losses_recorded.json.

The other cases keep the numbers recorded with the loop of commit d7829e0 (runs without L_help) or when L_help got
its own generator (runs with it; 2026-12-01). Cases re-recorded when the baselines became their authors'
(2026-12-01): ESD's sampled x_t and ESD-u's set, SalUn's mask (guided, its own draws), SA's Fisher, UCE, CA.
    .venv/bin/python tests/scripts/record_losses.py
"""

import json
from dataclasses import replace
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.models import build_pipeline

PATH = Path(__file__).parents[1] / "data" / "losses_recorded.json"

torch.set_num_threads(2)
# the object task as the losses were recorded on it: no held-out split (its first 4 retain prompts all trained on)
task = replace(replace(uk.get_task("object"), held_out=[]).head(3, 4), name="object-small")
cases = json.loads(PATH.read_text())
for case in cases:
    if case.get("recorded") != "re-record":
        continue
    steps = {} if uk.methods.make_config(case["method"], **case["overrides"]).steps == 0 else {"steps": 3}
    result = uk.unlearn(build_pipeline("tiny", seed=0), task, case["method"], batch_size=2, data_steps=2,
                        progress=False, **steps, **case["overrides"])
    case["history"] = result.history
    case["weight_sum"] = sum(float(p.double().sum()) for p in result.pipeline.unet.parameters())
    case["recorded"] = "2026-12-01, the authors' baselines"
    print(case["method"], case["overrides"], [round(h["loss"], 6) for h in result.history], flush=True)
PATH.write_text(json.dumps(cases, indent=1) + "\n")
