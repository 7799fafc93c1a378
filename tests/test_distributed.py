import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "eval_two_procs.py"


def _run(tmp_path, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(29500 + nproc),
           str(SCRIPT), str(tmp_path / f"cache{nproc}")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def test_two_processes_give_the_same_evaluation_as_one(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert one == two
