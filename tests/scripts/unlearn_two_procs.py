"""Run by tests/test_distributed.py under torchrun: unlearn the tiny embedded model on every process.

    python -m torch.distributed.run --nproc_per_node=2 unlearn_two_procs.py METHOD OUT_DIR [STEPS] [CHECKPOINTS]

Each rank writes OUT_DIR/rank{i}.json: its rank, the world size, a hash of its unlearned UNet's weights, the
names of the weights that changed, and its loss history. With CHECKPOINTS (a folder), `unlearn` checkpoints there.
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.models import build_pipeline

torch.set_num_threads(1)
method, out = sys.argv[1], Path(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
checkpoints = sys.argv[4] if len(sys.argv) > 4 else None
t = uk.get_task("object")
task = uk.Task(name="two-procs", forget_prompts=t.forget_prompts[:3], retain_prompts=t.retain_prompts[:4],
               anchor_prompts=t.anchor_prompts[:3], forget_concept=t.forget_concept, kind=t.kind,
               neighbour_concept=t.neighbour_concept, retain_concepts=t.retain_concepts[:4])
pipe = build_pipeline("tiny", seed=0)
r = uk.unlearn(pipe, task, method, steps=steps, batch_size=2, data_steps=2, data_seeds=1, progress=False,
               cache_dir=out / "cache", out_dir=checkpoints, checkpoint_every=1 if checkpoints else 0)

from accelerate import PartialState  # noqa: E402

state = PartialState()
h = hashlib.sha1()
for name, w in sorted(r.pipeline.unet.state_dict().items()):
    h.update(name.encode())
    h.update(w.detach().cpu().contiguous().numpy().tobytes())
changed = [n for (n, p), (_, q) in zip(pipe.unet.named_parameters(), r.pipeline.unet.named_parameters())
           if not torch.equal(p, q)]
(out / f"rank{state.process_index}.json").write_text(json.dumps(
    {"rank": state.process_index, "world": state.num_processes, "weights": h.hexdigest()[:16], "changed": changed,
     "history": r.history}))
