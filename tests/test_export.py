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
from unlearnkit.io import umask
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
    # diffusers' real from_single_file, offline, with the configs of a local folder: a file without the weights is
    # named as such (the positive case: test_single_file_export_loads_back_to_the_same_images)
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
    # with the base (--base, or the run.json `unlearnkit unlearn` writes), the SVD of its change: the fused rank-4
    # LoRA comes back whole at rank 4, and the report says so
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"base": str(tmp_path / "base")}))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "svd.safetensors"), "--format", "kohya",
                 "--rank", str(RANK), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base"] == str(tmp_path / "base") and report["svd_relative_error"] < 1e-5
    assert report["layers"] == len(run.lora) // 2 and report["not_carried"] == 0
    pipe = copy.deepcopy(base)
    pipe.load_lora_weights(tmp_path / "svd.safetensors")
    torch.testing.assert_close(_images(pipe, "embedded"), _images(run.pipeline, "embedded"), atol=LORA_ATOL, rtol=0)


def _bench():
    # bench/export_roundtrip.py: the measurements the docs quote, run here with assertions
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("export_roundtrip", Path(__file__).parents[1] / "bench" /
                                                  "export_roundtrip.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_export_never_destroys(tmp_path):
    # what a user may point an export at by mistake (bench/export_roundtrip.py --bad-inputs, the table in
    # docs/EXPORT.md): each is exit 2 and one clear line, and every file stays as it was
    rows = {r["input"].removeprefix("unlearnkit export "): r for r in _bench().bad_inputs(tmp_path)}
    says = {
        "run --out run": "is or holds the model being exported", "run --out run --overwrite": "is or holds",
        "run --out . --overwrite": "is or holds", "run/pipeline --out run/pipeline --overwrite": "is or holds",
        "run --out mine": "exists and is not empty; pass overwrite=True", "run --out run/lora --format lora":
        "exists and is not empty", "run --out old.safetensors --format kohya": "exists and is not empty",
        "run --out model.safetensors": "writes a folder, but", "run --out mine --format kohya": "is a folder",
        "run --out model.ckpt --format single-file": "ending in .safetensors", "missing --out x": "'missing' does not exist",
        "run --out x --dtype int8": "invalid choice: 'int8'", "full --out l --format lora": "records no base; pass --base",
    }
    assert rows.keys() == says.keys()
    for case, row in rows.items():
        assert row["exit"] == 2 and says[case] in row["says"] and row["files untouched"], row
        assert row["one line"] or case.endswith("int8"), row  # argparse's own refusal: its usage line, then the error
    from unlearnkit.app.cli import main

    folder = tmp_path / "run"
    before = (tmp_path / "old.safetensors").read_bytes()
    # overwrite replaces what the user asked to replace, and nothing else
    assert main(["export", str(folder), "--out", str(tmp_path / "old.safetensors"), "--format", "kohya",
                 "--overwrite"]) == 0
    assert (tmp_path / "old.safetensors").read_bytes() != before
    assert (folder / "checkpoint.pt").read_bytes() == b"the run's checkpoint"
    assert main(["export", str(folder), "--out", str(tmp_path / "new"), "--device", "cpu"]) == 0
    assert oct((tmp_path / "new").stat().st_mode & 0o777) == oct(0o777 & ~umask())
    assert oct((tmp_path / "old.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~umask())  # a file too


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


def test_the_original_layout_is_the_one_diffusers_script_writes():
    # the fixture file was written by diffusers' own scripts/convert_diffusers_to_original_stable_diffusion.py
    # (README beside it): the kit's renaming gives the same keys and tensors, and diffusers' loaders read it back
    from pathlib import Path

    from unlearnkit.original_layout import check_round_trip, original_state_dict

    here = Path(__file__).parent / "data" / "tiny-sd15-single"
    folder = uk.load_pipeline(here / "diffusers", device="cpu")
    mine, theirs = original_state_dict(folder), load_file(here / "tiny-sd15.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    check_round_trip(folder, mine)
    broken = dict(mine)
    broken.pop(next(k for k in broken if "attn2.to_k" in k))
    with pytest.raises(ValueError, match="finds no unet weight .*attn2.to_k"):
        check_round_trip(folder, broken)


def test_single_file_export_loads_back_to_the_same_images(case, tmp_path):
    backbone, base, run, images = case
    if backbone == "embedded":
        with pytest.raises(ValueError, match="needs a Stable Diffusion pipeline .*has no vae.*format='diffusers'"):
            uk.export(run, tmp_path / "model.safetensors", format="single-file")
        assert list(tmp_path.iterdir()) == []
        return
    base.save_pretrained(tmp_path / "config")
    file = uk.export(run, tmp_path / "model.safetensors", format="single-file")
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
               for k in load_file(file))
    loaded = uk.load_pipeline(file, config=tmp_path / "config", device="cpu")
    torch.testing.assert_close(_images(loaded, backbone), images, atol=SAME_ATOL, rtol=0)
    half = load_file(uk.export(run, tmp_path / "half.safetensors", format="single-file", dtype="fp16"))
    assert {v.dtype for v in half.values()} == {torch.float16}
    with pytest.raises(ValueError, match="ending in .safetensors"):
        uk.export(run, tmp_path / "model.ckpt", format="single-file")


def test_every_format_takes_a_dtype(case, tmp_path):
    backbone, base, run, images = case
    lora = load_file(uk.export(run, tmp_path / "lora", format="lora", dtype="bf16") / LORA_WEIGHT_NAME)
    assert {v.dtype for v in lora.values()} == {torch.bfloat16}
    kohya = load_file(uk.export(run, tmp_path / "k.safetensors", format="kohya", dtype="fp16"))
    assert {v.dtype for k, v in kohya.items() if not k.endswith(".alpha")} == {torch.float16}
    folder = uk.export(run, tmp_path / "half", dtype="fp16")
    weights = load_file(next((folder / "unet").glob("*.safetensors")))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    assert run.pipeline.unet.dtype == torch.float32  # the caller's pipeline is left as it was
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        uk.export(run, tmp_path / "x", dtype="int8")


def test_kohya_metadata_names_the_base_as_a1111_reads_it():
    # kohya-ss/sd-scripts train_network.py's ss_* keys; AUTOMATIC1111's Lora/network.py detect_version files a
    # LoRA as SD-2 where ss_v2 == "True", as SD-1 for any other metadata
    from unlearnkit.export import kohya_metadata

    config = LoraConfig(r=4, lora_alpha=8)
    lora = lambda width: {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":  # noqa: E731
                          torch.zeros(4, width)}
    v2 = SimpleNamespace(scheduler=SimpleNamespace(config=SimpleNamespace(prediction_type="v_prediction")))
    sd1, sd2 = kohya_metadata(lora(768), config), kohya_metadata(lora(1024), config, pipe=v2)
    assert (sd1["ss_v2"], sd1["ss_base_model_version"]) == ("False", "sd_v1")
    assert (sd2["ss_v2"], sd2["ss_base_model_version"]) == ("True", "sd_v2_v")
    assert (sd1["ss_network_module"], sd1["ss_network_dim"], sd1["ss_network_alpha"]) == ("networks.lora", "4", "8.0")
    assert all(isinstance(v, str) for v in sd1.values())  # safetensors metadata holds strings only
    assert kohya_metadata(lora(32), config)["ss_base_model_version"] == "unlearnkit-embedded"


def test_a_lora_from_a_full_weight_run_is_the_svd_of_its_change(tmp_path):
    from unlearnkit.lora_extract import extract_lora

    base = _base("embedded")
    full = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a rank-2 change on one Linear and one Conv2d, and a bias a LoRA cannot carry
        linear = next(m for n, m in full.unet.named_modules() if n.endswith("attn2.to_k"))
        conv = full.unet.conv_in
        for m in (linear, conv):
            flat = m.weight.flatten(1)
            u, v = torch.randn(flat.shape[0], 2, generator=gen), torch.randn(2, flat.shape[1], generator=gen)
            m.weight += (0.01 * u @ torch.diag(torch.tensor([1.0, 0.5])) @ v).reshape(m.weight.shape)
        full.unet.conv_out.bias += 1e-3
    lora, config, report = extract_lora(base, full, rank=2)
    assert report.layers == 2 and report.relative_error < 1e-5 and report.not_carried == ["conv_out.bias"]
    assert lora["conv_in.lora_A.weight"].shape == (2, *conv.weight.shape[1:])  # peft's conv LoRA shapes
    assert lora["conv_in.lora_B.weight"].shape == (conv.weight.shape[0], 2, 1, 1)
    one = extract_lora(base, full, rank=1)[2]
    assert 0.05 < one.relative_error < 0.95 and one.worst_relative_error >= one.relative_error
    # loaded on the base with diffusers, the LoRA gives the full run's weights (all but the bias)
    folder = uk.export(SimpleNamespace(pipeline=full, lora=lora, lora_config=config), tmp_path / "l", format="lora")
    pipe = copy.deepcopy(base)
    pipe.load_lora_weights(folder)
    pipe.unet.fuse_lora()
    pipe.unet.unload_lora()
    for name in ("conv_in.weight", [n for n, _ in base.unet.named_parameters() if n.endswith("attn2.to_k.weight")][0]):
        torch.testing.assert_close(dict(pipe.unet.named_parameters())[name], dict(full.unet.named_parameters())[name],
                                   atol=1e-6, rtol=0)
    # export(base=...) extracts it in one call; the error names rank and base
    assert uk.export(full, tmp_path / "k.safetensors", format="kohya", base=base, rank=2).exists()
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        extract_lora(base, full, rank=0)
    with pytest.raises(ValueError, match="no change to extract"):
        extract_lora(base, base)


def test_a_safety_checker_and_its_flag_survive_load_and_export(tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    sd = _base("sd")
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 32,
                                                                                       "patch_size": 16},
                                                      projection_dim=8))
    pipe = StableDiffusionPipeline(**{**sd.components, "safety_checker": checker,
                                      "feature_extractor": CLIPImageProcessor(), "requires_safety_checker": True})
    pipe.save_pretrained(tmp_path / "with-checker")
    loaded = uk.load_pipeline(tmp_path / "with-checker", device="cpu")
    assert loaded.safety_checker is not None and loaded.config.requires_safety_checker
    uk.export(loaded, tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["safety_checker"][1] == "StableDiffusionSafetyChecker" and index["requires_safety_checker"] is True


@pytest.mark.slow  # 2-5 min: 11 exports of a tiny SD-1.x, each opened by plain diffusers in its own process
def test_every_format_loads_in_plain_diffusers_in_another_process(tmp_path):
    bench = _bench()
    rows = {r["format"]: r for r in bench.measure("sd15-narrow", tmp_path, ranks=(4, 16))}
    assert not any(r["child_imported_unlearnkit"] for r in rows.values())
    for fmt in ("diffusers", "run folder pipeline/", "single-file"):
        assert rows[fmt]["max_abs_diff"] <= SAME_ATOL * 5, fmt
    for fmt in ("lora", "kohya"):
        assert rows[fmt]["max_abs_diff"] <= LORA_ATOL, fmt
    assert rows["single-file fp16"]["max_abs_diff"] <= 1e-2
    # the full run's change has rank 8: rank 16 carries it (all but the nudged bias), rank 4 cannot
    for fmt in ("lora", "kohya"):
        low, high = rows[f"{fmt} from full (SVD rank 4)"], rows[f"{fmt} from full (SVD rank 16)"]
        assert high["svd_relative_error"] < 1e-5 < 0.1 < low["svd_relative_error"]
        assert high["not_carried"] == ["conv_in.bias"] and high["max_abs_diff"] < low["max_abs_diff"]
        assert high["max_abs_diff_carried"] <= LORA_ATOL  # everything but the bias arrives


def test_every_kohya_module_has_its_weight_in_the_original_layout(case, tmp_path):
    # AUTOMATIC1111 and ComfyUI patch a kohya module into the model by its name in SD's original layout
    # (input_blocks / middle_block / output_blocks): each module of the file must name a UNet layer whose original
    # key exists (the layout checked against diffusers' own converters) with the shape the LoRA's up @ down gives
    from unlearnkit.original_layout import UNET_PREFIX, original_state_dict, unet_key

    backbone, base, run, images = case
    if backbone != "sd":
        pytest.skip("the embedded model has no original SD layout to map kohya names to")
    kohya = load_file(uk.export(run, tmp_path / "k.safetensors", format="kohya"))
    layers = {n.replace(".", "_"): n for n, m in base.unet.named_modules() if hasattr(m, "weight")}
    original = original_state_dict(base)
    cfg = base.unet.config
    up_attention = ["CrossAttn" in t for t in cfg.up_block_types]
    modules = sorted({k.split(".")[0].removeprefix("lora_unet_") for k in kohya})
    assert modules and len(modules) == len(kohya) // 3
    for module in modules:
        name = layers[module]  # the kohya name is a UNet layer's path with underscores, one layer each
        key = UNET_PREFIX + unet_key(f"{name}.weight", cfg.layers_per_block, up_attention)
        up, down = kohya[f"lora_unet_{module}.lora_up.weight"], kohya[f"lora_unet_{module}.lora_down.weight"]
        assert original[key].shape == (up.flatten(1) @ down.flatten(1)).shape, module


@pytest.mark.slow  # ~40 s: SD-2.x's 23-layer, 1024-wide text encoder built, exported and loaded back
def test_an_sd2_single_file_loads_back_through_from_single_file(tmp_path):
    # OpenCLIP's layout (resblocks, q/k/v stacked in in_proj) for the text encoder, v-prediction kept by the config
    sd2 = build_tiny_sd(PROMPTS["sd"], image_size=64, shape="sd2-narrow")
    sd2.save_pretrained(tmp_path / "config")
    file = uk.export(sd2, tmp_path / "sd2.safetensors", format="single-file")
    keys = load_file(file).keys()
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight") for k in keys)
    loaded = uk.load_pipeline(file, config=tmp_path / "config", device="cpu")
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(sd2, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
