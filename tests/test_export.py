"""Export and single-file loading: every exported model, loaded back the way its users load it, draws the same
images as the in-memory one (same prompts, same seeds), on the embedded model and on a tiny Stable Diffusion.

Tolerances, in [0,1] pixel units: 1e-6 for a diffusers folder (the same weights run through the same code), 1e-4
for a LoRA loaded on the base (it computes W x + s B A x where the run's pipeline has W + s B A fused into one
matrix: float32 rounding differs by ~1e-6 after two DDIM steps; 1e-4 is 1/40 of an 8-bit grey level).
"""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

import unlearnkit as uk
from unlearnkit.app.cli import main
from unlearnkit.export import LORA_WEIGHT_NAME, read_lora
from unlearnkit.models import build_pipeline
from unlearnkit.sampling import sample
from unlearnkit.sd import build_tiny_sd

PROMPTS = {"embedded": ["a red circle, plain style", "a blue square, striped style"], "sd": ["a cat", "a dog"]}
SEEDS = [0, 1]
RANK, ALPHA = 4, 8  # alpha != rank: a wrong LoRA scale in any format shows in the images
LORA_ATOL = 1e-4
SAME_ATOL = 1e-6


def _base(backbone):
    pipe = build_pipeline("tiny", seed=0) if backbone == "embedded" else build_tiny_sd(PROMPTS["sd"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, backbone):
    return sample(pipe, PROMPTS[backbone], SEEDS, steps=2)


def _lora_run(base):
    """What a `params="lora"` run returns: the LoRA fused into the pipeline's UNet, and the adapter apart."""
    unet = copy.deepcopy(base.unet)
    lora_config = LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                             target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(lora_config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero (the LoRA a no-op): give it small random values, as training would
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    lora = get_peft_model_state_dict(unet)
    fused = copy.deepcopy(unet)
    fused.fuse_lora()
    fused.unload_lora()
    pipeline = type(base)(**{**base.components, "unet": fused})
    return SimpleNamespace(pipeline=pipeline, lora=lora, lora_config=lora_config)


@pytest.fixture(scope="module", params=["embedded", "sd"])
def case(request):
    """(backbone, base pipeline, LoRA run, the run's images); the LoRA visibly changes the images."""
    base = _base(request.param)
    run = _lora_run(base)
    images = _images(run.pipeline, request.param)
    assert (images - _images(base, request.param)).abs().max() > 1e-2
    return request.param, base, run, images


def test_lora_export_loads_onto_the_base(case, tmp_path):
    backbone, base, run, images = case
    folder = uk.export(run, tmp_path / "lora", format="lora")
    assert (folder / LORA_WEIGHT_NAME).exists()
    pipe = copy.deepcopy(base)
    pipe.load_lora_weights(folder)
    torch.testing.assert_close(_images(pipe, backbone), images, atol=LORA_ATOL, rtol=0)
    # the folder reads back as the same adapter and config (what `unlearnkit export RUN --format kohya` uses)
    lora, lora_config = read_lora(folder)
    assert lora.keys() == run.lora.keys() and all(torch.equal(lora[k], run.lora[k]) for k in lora)
    assert (lora_config.r, lora_config.lora_alpha) == (RANK, ALPHA)


def test_kohya_export_has_kohya_keys_and_the_trained_scale(case, tmp_path):
    backbone, base, run, images = case
    file = uk.export(run, tmp_path / "unlearned.safetensors", format="kohya")
    kohya = load_file(file)
    modules = {k.removesuffix(".lora_A.weight") for k in run.lora if k.endswith(".lora_A.weight")}
    assert len(kohya) == 3 * len(modules)
    for module in modules:
        name = "lora_unet_" + module.replace(".", "_")  # kohya's naming: the module path with underscores
        assert torch.equal(kohya[f"{name}.lora_down.weight"], run.lora[f"{module}.lora_A.weight"])
        assert torch.equal(kohya[f"{name}.lora_up.weight"], run.lora[f"{module}.lora_B.weight"])
        assert kohya[f"{name}.alpha"].item() == ALPHA  # A1111 / ComfyUI scale by alpha / rank = 2, as peft did
    # diffusers' own kohya reader puts it on the base at the same scale
    pipe = copy.deepcopy(base)
    pipe.load_lora_weights(file)
    torch.testing.assert_close(_images(pipe, backbone), images, atol=LORA_ATOL, rtol=0)


def _open(folder, backbone):
    # how each user opens the folder: diffusers for Stable Diffusion, unlearnkit for the embedded model
    if backbone == "sd":
        pipe = StableDiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return uk.load_pipeline(folder, device="cpu")


def test_diffusers_export_round_trip(case, tmp_path):
    backbone, base, run, images = case
    out = tmp_path / "unlearned"
    uk.export(run, out)
    torch.testing.assert_close(_images(_open(out, backbone), backbone), images, atol=SAME_ATOL, rtol=0)
    # with overwrite, a bare pipeline replaces the folder whole, and no temp folder stays behind
    uk.export(base, out, overwrite=True)
    torch.testing.assert_close(_images(_open(out, backbone), backbone), _images(base, backbone), atol=SAME_ATOL,
                               rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["unlearned"]


def test_diffusers_export_fuses_a_loaded_lora(case, tmp_path):
    backbone, base, run, images = case
    pipe = copy.deepcopy(base)
    uk.export(run, tmp_path / "lora", format="lora")
    pipe.load_lora_weights(tmp_path / "lora")
    uk.export(pipe, tmp_path / "merged")
    weights = load_file(next((tmp_path / "merged" / "unet").glob("*.safetensors")))
    assert not [k for k in weights if "lora" in k or "base_layer" in k]
    torch.testing.assert_close(_images(_open(tmp_path / "merged", backbone), backbone), images, atol=LORA_ATOL, rtol=0)


def test_lora_formats_refuse_a_full_weight_run(tmp_path):
    pipe = _base("embedded")
    full = SimpleNamespace(pipeline=pipe, lora=None, lora_config=None)
    for model in (full, pipe):
        for format in ("lora", "kohya"):
            with pytest.raises(ValueError, match="trained full weights.*format='diffusers'.*params='lora'"):
                uk.export(model, tmp_path / "x.safetensors", format=format)
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        uk.export(pipe, tmp_path / "x", format="onnx")
    run = _lora_run(pipe)
    with pytest.raises(ValueError, match="ending in .safetensors"):
        uk.export(run, tmp_path / "kohya", format="kohya")
    assert list(tmp_path.iterdir()) == []


def test_single_file_checkpoint_needs_a_config(tmp_path):
    file = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, file)
    with pytest.raises(ValueError, match=r"is a single-file checkpoint; pass config=<a diffusers folder"):
        uk.load_pipeline(file, device="cpu")
    with pytest.raises(ValueError, match="no model_index.json"):
        uk.load_pipeline(file, config=tmp_path, device="cpu")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; load_pipeline takes a pipeline folder"):
        uk.load_pipeline(other, device="cpu")


def test_single_file_checkpoint_loads_through_diffusers_offline(tmp_path):
    # The positive case (a CompVis-layout file loading to the same images) needs a file in the original layout.
    # diffusers' package converts original -> diffusers only (its reverse converter is a repository script), so no
    # such file can be written here without a hand-written key table. What runs here is diffusers' real
    # from_single_file, offline, with the configs of a local folder: a file without the weights is named as such.
    sd = _base("sd")
    sd.save_pretrained(tmp_path / "sd")
    file = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, file)
    with pytest.raises(ValueError, match="could not load the single-file checkpoint .*original .CompVis / A1111"):
        uk.load_pipeline(file, config=tmp_path / "sd", device="cpu")
    _base("embedded").save_pretrained(tmp_path / "embedded")
    with pytest.raises(ValueError, match="UnlearnkitPipeline, which has no single-file format"):
        uk.load_pipeline(file, config=tmp_path / "embedded", device="cpu")
    with pytest.raises(ValueError, match="config is for single-file checkpoints"):
        uk.load_pipeline(tmp_path / "sd", config=tmp_path / "sd", device="cpu")


def test_cli_export(tmp_path, capsys):
    base = _base("embedded")
    run = _lora_run(base)
    # a LoRA run's folder as `unlearnkit unlearn --out` writes it: pipeline/ and lora/
    run.pipeline.save_pretrained(tmp_path / "run" / "pipeline")
    uk.export(run, tmp_path / "run" / "lora", format="lora")

    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "k.safetensors"), "--format", "kohya",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "k.safetensors")
    uk.export(run, tmp_path / "direct.safetensors", format="kohya")
    direct, via_cli = load_file(tmp_path / "direct.safetensors"), load_file(tmp_path / "k.safetensors")
    assert direct.keys() == via_cli.keys() and all(torch.equal(direct[k], via_cli[k]) for k in direct)

    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "full"), "--device", "cpu"]) == 0
    torch.testing.assert_close(_images(uk.load_pipeline(tmp_path / "full", device="cpu"), "embedded"),
                               _images(run.pipeline, "embedded"), atol=SAME_ATOL, rtol=0)

    # a full-weight run has no lora/: one line naming the fix, exit 2
    (tmp_path / "run" / "lora" / LORA_WEIGHT_NAME).unlink()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "l"), "--format", "lora"]) == 2
    assert "trained full weights" in capsys.readouterr().err


def test_export_never_destroys(tmp_path, capsys):
    # what a user may point an export at by mistake: each is one clear error, and the files stay as they were
    base = _base("embedded")
    run = _lora_run(base)
    folder = tmp_path / "run"
    run.pipeline.save_pretrained(folder / "pipeline")
    uk.export(run, folder / "lora", format="lora")
    (folder / "checkpoint.pt").write_bytes(b"the run's checkpoint")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    (tmp_path / "old.safetensors").write_bytes(b"an older kohya file")

    def snapshot():
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    capsys.readouterr()
    cases = [  # (CLI args, what the one line says)
        (["export", str(folder), "--out", str(folder)], "is or holds the model being exported"),
        (["export", str(folder), "--out", str(folder), "--overwrite"], "is or holds the model being exported"),
        (["export", str(folder), "--out", str(tmp_path), "--overwrite"], "is or holds the model being exported"),
        (["export", str(folder / "pipeline"), "--out", str(folder / "pipeline"), "--overwrite"], "is or holds"),
        (["export", str(folder), "--out", str(tmp_path / "mine")], "exists and is not empty; pass overwrite=True"),
        (["export", str(folder), "--out", str(folder / "lora"), "--format", "lora"], "exists and is not empty"),
        (["export", str(folder), "--out", str(tmp_path / "old.safetensors"), "--format", "kohya"], "exists"),
        (["export", str(folder), "--out", str(tmp_path / "model.safetensors")], "writes a folder, but"),
        (["export", str(folder), "--out", str(tmp_path / "mine"), "--format", "kohya"], "is a folder"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (args, err)
        assert snapshot() == before, args
    # overwrite replaces what the user asked to replace, and nothing else
    assert main(["export", str(folder), "--out", str(tmp_path / "old.safetensors"), "--format", "kohya",
                 "--overwrite"]) == 0
    assert (tmp_path / "old.safetensors").read_bytes() != before["old.safetensors"]
    assert (folder / "checkpoint.pt").read_bytes() == b"the run's checkpoint"
    assert main(["export", str(folder), "--out", str(tmp_path / "new"), "--device", "cpu"]) == 0
    assert oct((tmp_path / "new").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_original_layout_single_file_loads_offline_like_its_folder():
    # the fixture's README says how the file was made (diffusers' own converter, run once outside the kit)
    from pathlib import Path

    from unlearnkit.sampling import sample

    here = Path(__file__).parent / "data" / "tiny-sd15-single"
    folder = uk.load_pipeline(here / "diffusers", device="cpu")
    single = uk.load_pipeline(here / "tiny-sd15.safetensors", config=here / "diffusers", device="cpu")
    assert type(single).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    images = [sample(p, ["a photo of a cat"], [0, 1], steps=2) for p in (folder, single)]
    assert torch.equal(*images)
