"""Stable Diffusion at its real shapes: the published SD 1.x / 2.x configs build, fit together (the UNet's
cross-attention takes the text encoder's width) and train through `uk.unlearn`; the narrow versions run every
method. Weights are random (nothing is downloaded), images are 64 px (8x8 latents)."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import METHODS
from unlearnkit.sd import SHAPES, build_tiny_sd

TASK = uk.Task(name="shapes", forget_prompts=["a painting of a cat"], retain_prompts=["a painting of a frog"],
               forget_concept="cat",  # FMN steers attention away from this word's tokens
               anchor_prompts=["a painting of an animal"])
WORDS = TASK.forget_prompts + TASK.retain_prompts + TASK.anchor_prompts + [""]
FAST = dict(batch_size=1, data_steps=2, data_seeds=1, retain_seeds=1, progress=False)

# published values (stable-diffusion-v1-4/-v1-5 and -2-1 configs; sources beside the dicts in unlearnkit/sd.py)
PUBLISHED = {
    "sd15": dict(cross_attention_dim=768, text_layers=12, text_heads=12, text_intermediate=3072, text_act="quick_gelu",
                 heads=8, linear_projection=False, prediction_type="epsilon", unet_params_m=859.5),
    "sd2": dict(cross_attention_dim=1024, text_layers=23, text_heads=16, text_intermediate=4096, text_act="gelu",
                heads=(5, 10, 20, 20), linear_projection=True, prediction_type="v_prediction", unet_params_m=865.9),
}


def changed_params(before, after):
    """Names of the parameters that differ between two UNets of one architecture."""
    return [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)]


def test_unknown_shape_lists_the_known_ones():
    with pytest.raises(ValueError, match="sdxl.*tiny, sd15, sd2, sd15-narrow, sd2-narrow"):
        build_tiny_sd(WORDS, shape="sdxl")
    with pytest.raises(ValueError, match="multiple of 8"):
        build_tiny_sd(WORDS, image_size=60, shape="sd15-narrow")


@pytest.mark.slow  # 2.5-4.5 minutes each on 2 shared CPU cores: an 860M-parameter UNet built, copied and run
@pytest.mark.parametrize("shape", ["sd15", "sd2"])
def test_full_config_trains_esd_x(shape):
    # the whole published architecture at 64 px: ESD-x trains only cross-attention, so memory stays ~8 GB
    want = PUBLISHED[shape]
    pipe = build_tiny_sd(WORDS, image_size=64, shape=shape)
    unet, text = pipe.unet.config, pipe.text_encoder.config
    assert unet.cross_attention_dim == text.hidden_size == want["cross_attention_dim"]
    assert (text.num_hidden_layers, text.num_attention_heads, text.intermediate_size, text.hidden_act) == (
        want["text_layers"], want["text_heads"], want["text_intermediate"], want["text_act"])
    assert tuple(unet.block_out_channels) == (320, 640, 1280, 1280) and unet.layers_per_block == 2
    heads = unet.attention_head_dim
    assert (tuple(heads) if isinstance(heads, (list, tuple)) else heads) == want["heads"]
    assert unet.use_linear_projection == want["linear_projection"]
    assert tuple(pipe.vae.config.block_out_channels) == (128, 256, 512, 512) and pipe.vae.config.latent_channels == 4
    assert pipe.vae.config.scaling_factor == 0.18215 and pipe.tokenizer.model_max_length == 77
    assert pipe.scheduler.config.prediction_type == want["prediction_type"]
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)
    assert round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1) == want["unet_params_m"]

    r = uk.unlearn(pipe, TASK, "esd-x", steps=2, **FAST)
    assert len(r.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)
    changed = changed_params(pipe.unet, r.pipeline.unet)
    attn2 = [n for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    assert changed and all("attn2" in n for n in changed)  # nothing outside cross-attention moved
    assert len(changed) >= 0.9 * len(attn2)  # and nearly all of it did


@pytest.mark.parametrize("full", ["sd15", "sd2"])
def test_narrow_keeps_depth_text_and_cross_attention(full):
    unet, text, vae, scheduler = SHAPES[full]
    n_unet, n_text, n_vae, n_scheduler = SHAPES[f"{full}-narrow"]
    assert n_text == text and n_scheduler == scheduler
    assert {k: v for k, v in n_unet.items() if k not in ("block_out_channels", "norm_num_groups")} == \
        {k: v for k, v in unet.items() if k not in ("block_out_channels", "norm_num_groups")}
    assert len(n_vae["block_out_channels"]) == len(vae["block_out_channels"]) and n_vae["latent_channels"] == 4
    assert all(n * 8 <= w for n, w in zip(n_unet["block_out_channels"], unet["block_out_channels"]))


# sd2-narrow keeps OpenCLIP-H's 23 layers x 1024 wide text encoder: 20-80 s a method on 2 shared CPU cores
@pytest.fixture(scope="module", params=["sd15-narrow", pytest.param("sd2-narrow", marks=pytest.mark.slow)])
def narrow(request, tmp_path_factory):
    # one data cache per pipeline: the base images are the same for every method, generated by the first test
    return build_tiny_sd(WORDS, image_size=64, shape=request.param), tmp_path_factory.mktemp(request.param)


# one step is the point, not the statistics (SA's authors' Fisher sums 1000 timesteps an example: tests/test_parity.py)
CHEAP = {"sa": dict(fisher="one-t", fisher_samples=2), "salun": dict(mask_batches=1)}


# the default run keeps two methods (the loop's two kinds of step: a frozen-base target, and L_help + anchors);
# .ci/run runs the others after the main suite (-m slow)
QUICK = {"esd-x", "ovw"}


@pytest.mark.parametrize("method", [m if m in QUICK else pytest.param(m, marks=pytest.mark.slow) for m in sorted(METHODS)])
def test_narrow_config_runs_every_method(narrow, method):
    narrow_pipe, cache_dir = narrow
    steps = 0 if uk.methods.make_config(method).steps == 0 else 1  # a closed form (UCE) trains no step
    r = uk.unlearn(narrow_pipe, TASK, method, steps=steps, cache_dir=cache_dir, **FAST, **CHEAP.get(method, {}))
    assert len(r.history) == steps and all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)
    changed = changed_params(narrow_pipe.unet, r.pipeline.unet)
    assert changed
    if method == "esd-x":
        assert all("attn2" in n for n in changed)
    if method == "esd-u":
        assert not any("attn2" in n for n in changed)


ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_peak_table_and_time_limit():
    gc = _gpu_check()
    assert gc.peak_tflops("NVIDIA H200", None) == gc.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gc.peak_tflops("NVIDIA H100 PCIe", None) == 756.0 and gc.peak_tflops("Tesla T4", None) is None
    assert gc.peak_tflops("Tesla T4", 65.0) == 65.0
    start = time.time()
    with pytest.raises(TimeoutError, match="over its 1 s limit"):
        with gc.time_limit(1):
            while True:
                time.sleep(0.05)
    assert time.time() - start < 3


@pytest.mark.slow  # about 3 minutes on 2 shared CPU cores: five unlearn calls on SD 1.x's narrow shape
def test_gpu_check_dry_run_prints_every_phase(tmp_path):
    out = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(tmp_path / "partial.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["dry_run"] and r["shape"] == "sd15-narrow" and r["image_size"] == 64
    assert list(r["phases"]) == ["setup", "flops", "esd-x", "ovw", "ovw-gc", "esd-x-compiled"]
    assert not any("error" in p for p in r["phases"].values())
    assert r["phases"]["flops"]["flops_per_step"] > 1e9  # three SD-shaped UNet passes and a backward
    for name in ("esd-x", "ovw", "ovw-gc", "esd-x-compiled"):
        assert r["phases"][name]["steps"] == 2 and r["phases"][name]["steps_per_s"] > 0
    assert json.loads((tmp_path / "partial.json").read_text()) == r
