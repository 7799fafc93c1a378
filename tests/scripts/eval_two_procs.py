"""Run by tests/test_distributed.py under torchrun: evaluate a tiny model pair and print the numbers (rank 0)."""
import json
import os
import sys

import torch

import unlearnkit as uk
from unlearnkit.models import build_pipeline

torch.set_num_threads(1)
t = uk.get_task("object")
task = uk.Task(name="two-procs", forget_prompts=t.forget_prompts[:5], retain_prompts=t.retain_prompts[:7],
               anchor_prompts=t.anchor_prompts[:5], forget_concept=t.forget_concept, kind=t.kind,
               neighbour_concept=t.neighbour_concept, retain_concepts=t.retain_concepts[:7])
base, other = build_pipeline("tiny", seed=0), build_pipeline("tiny", seed=1)
from accelerate import PartialState  # noqa: E402

from unlearnkit.sampling import sample_pairs  # noqa: E402

images = sample_pairs(base, task.retain_prompts, list(range(7)), steps=3, batch_size=2)
r = uk.evaluate(base, other, task, seeds=[0, 1, 2], steps=3, fid=False, cache_dir=sys.argv[1], batch_size=4)
if PartialState().is_main_process and int(os.environ.get("RANK", "0")) == 0:  # one line, from rank 0 only
    print(json.dumps({"lpips_ret": r["lpips_ret"], "lpips_forget": r["lpips_forget"],
                      "checksum": float(images.double().sum())}))
