"""Bad input gets one clear error; interrupted runs resume exactly; nothing is left half written."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import unlearnkit as uk
from unlearnkit.io import atomic_save, load_checkpoint
from unlearnkit.backbone import encode_images


def test_image_size_and_channels_the_model_does_not_take(tiny_pipe):
    with pytest.raises(ValueError, match=r"takes 32x32 images, got 64x64"):
        encode_images(tiny_pipe, torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*\(1, 1, 32, 32\)"):
        encode_images(tiny_pipe, torch.rand(1, 1, 32, 32))


def test_classifier_rejects_grey_images():
    from unlearnkit.evaluation.classifier import ConceptClassifier

    with pytest.raises(ValueError, match=r"shape \(2, 1, 32, 32\)"):
        ConceptClassifier().predict(torch.rand(2, 1, 32, 32))


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not written by unlearnkit"):
        load_checkpoint(tmp_path / "foreign.pt")
    atomic_save({"kind": "base-train"}, tmp_path / "base.pt")
    with pytest.raises(ValueError, match="'base-train' checkpoint, not 'unlearn'"):
        load_checkpoint(tmp_path / "base.pt", expect="unlearn")


def test_mismatched_weights_for_the_classifier(tmp_path, tiny_pipe):
    from safetensors.torch import save_file

    from unlearnkit.evaluation.classifier import load_classifier

    save_file({k: v.contiguous() for k, v in tiny_pipe.unet.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="another model's weights"):
        load_classifier(tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(tmp_path / "bad.safetensors")


def test_cuda_without_a_gpu(tiny_pipe, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny_pipe.save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="no GPU is available"):
        uk.load_pipeline(tmp_path / "p", device="cuda")


def test_a_crash_during_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"kind": "unlearn", "step": 1}, path)

    def dies_half_way(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"kind": "unlearn", "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def _unlearn_cmd(model, out):
    return [sys.executable, "-m", "unlearnkit", "unlearn", "--model", str(model), "--task", "object",
            "--method", "esd-u", "--out", str(out), "--device", "cpu", "--json",
            "--set", "steps=60", "--set", "checkpoint_every=3", "--set", "x_t=data", "--set", "batch_size=2", "--set", "data_steps=2"]


@pytest.mark.slow  # three CLI processes, ~50 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
def test_sigkill_then_the_same_command_resumes_bit_identically(tiny_pipe, tmp_path):
    from safetensors.torch import load_file

    model = tmp_path / "tiny"
    tiny_pipe.save_pretrained(model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the uninterrupted run (it also fills the data cache, so both runs see the same data)
    subprocess.run(_unlearn_cmd(model, tmp_path / "full"), check=True, capture_output=True, env=env)
    # the interrupted run: SIGKILL once a mid-way checkpoint exists
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_unlearn_cmd(model, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (cut / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load_checkpoint(cut / "checkpoint.pt")["step"]
    assert 0 < step < 60, "the run was not stopped mid-way"
    subprocess.run(_unlearn_cmd(model, cut), check=True, capture_output=True, env=env)
    a = load_file(str(tmp_path / "full" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(cut / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_names_the_failing_notebook_and_cell(tmp_path):
    import nbformat

    from unlearnkit.app.reproduce import reproduce

    book = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nfigures_dir = "."')
    params.metadata["tags"] = ["parameters"]
    book.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nb").mkdir()
    nbformat.write(book, tmp_path / "nb" / "00_broken.ipynb")
    with pytest.raises(ValueError, match=r"notebook 00_broken.ipynb failed in cell \d+.*RuntimeError: boom"):
        reproduce(profile="smoke", out_dir=tmp_path / "out", notebooks=tmp_path / "nb", figures_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        reproduce(profile="fast", notebooks=tmp_path / "nb")


def test_reproduce_runs_a_group_by_name(tmp_path):
    import nbformat

    from unlearnkit.app.reproduce import reproduce

    for name, code in (("00_paper", "raise RuntimeError('not in the group')"), ("12_seq", "x = 1"), ("13_att", "x = 2")):
        book = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('profile = "smoke"\nfigures_dir = "."\ndevice = "cpu"')
        params.metadata["tags"] = ["parameters"]
        book.cells = [params, nbformat.v4.new_code_cell(code)]
        book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        (tmp_path / "nb").mkdir(exist_ok=True)
        nbformat.write(book, tmp_path / "nb" / f"{name}.ipynb")
    r = reproduce(profile="smoke", out_dir=tmp_path / "out", notebooks=tmp_path / "nb", figures_dir=tmp_path, only="beyond")
    assert list(r["notebooks"]) == ["12_seq.ipynb", "13_att.ipynb"]
    with pytest.raises(ValueError, match="failed in cell"):  # 'paper' is 00-11
        reproduce(profile="smoke", out_dir=tmp_path / "out", notebooks=tmp_path / "nb", figures_dir=tmp_path, only="paper")
