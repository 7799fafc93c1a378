"""Re-record the 3-step losses of the runs that use L_help (tests/data/losses_recorded.json).

The runs without L_help keep the numbers recorded with the loop of commit d7829e0. The runs with it were re-recorded
when L_help got a generator of its own (its retain draws no longer move the method's forget batches):
    .venv/bin/python tests/scripts/record_losses.py
"""

import json
from dataclasses import replace
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.methods import make_config
from unlearnkit.models import build_pipeline

PATH = Path(__file__).parents[1] / "data" / "losses_recorded.json"

torch.set_num_threads(2)
task = replace(uk.get_task("object").head(3, 4), name="object-small")
cases = json.loads(PATH.read_text())
for case in cases:
    if not make_config(case["method"], **case["overrides"]).help_weight:
        continue
    result = uk.unlearn(build_pipeline("tiny", seed=0), task, case["method"], steps=3, batch_size=2, data_steps=2,
                        progress=False, **case["overrides"])
    case["history"] = result.history
    case["weight_sum"] = sum(float(p.double().sum()) for p in result.pipeline.unet.parameters())
    case["recorded"] = "re-recorded: L_help's own generator"
    print(case["method"], case["overrides"], [round(h["loss"], 6) for h in result.history])
PATH.write_text(json.dumps(cases, indent=1) + "\n")
