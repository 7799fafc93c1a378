"""Stable Diffusion through the same code: a tiny random SD pipeline built here, saved with save_pretrained
and loaded back through unlearnkit.load_pipeline."""

import json
import subprocess
import sys

import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import METHODS
from unlearnkit.sd import build_tiny_sd


@pytest.fixture(scope="module")
def sd_task():
    t = uk.get_task("sd-cat")
    return uk.Task(name="sd-cat-small", forget_prompts=t.forget_prompts[:2], retain_prompts=t.retain_prompts[:3],
                   anchor_prompts=t.anchor_prompts[:2], forget_concept=t.forget_concept,
                   neighbour_concept=t.neighbour_concept, kind=t.kind, retain_concepts=t.retain_concepts[:3])


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    full = uk.get_task("sd-cat")
    pipe = build_tiny_sd(full.forget_prompts + full.retain_prompts + full.anchor_prompts + [""])
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    pipe.save_pretrained(path)
    return path


def test_builtin_sd_tasks_mirror_the_paper():
    v, c = uk.get_task("sd-vangogh"), uk.get_task("sd-cat")
    assert all("Van Gogh" in p for p in v.forget_prompts) and v.neighbour_prompts[0].endswith("Vermeer")
    assert v.retain_concepts[0] == "Vermeer" and len(v.anchor_prompts) == len(v.forget_prompts)
    assert c.forget_concept == "cat" and "frog" in c.retain_prompts[0]


def test_load_pipeline_gives_a_stable_diffusion_pipeline(sd_dir):
    pipe = uk.load_pipeline(sd_dir, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.vae is not None
    x = uk.sample(pipe, ["a photo of a cat"], [0, 1], steps=2)
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_sd(sd_dir, sd_task, method):
    pipe = uk.load_pipeline(sd_dir, device="cpu")
    steps = 0 if uk.methods.make_config(method).steps == 0 else 2  # a closed form (UCE) trains no step
    cheap = dict(fisher_samples=1) if method == "sa" else {}  # the authors' Fisher: 1000 passes an example
    r = uk.unlearn(pipe, sd_task, method, steps=steps, batch_size=2, data_steps=2, progress=False, **cheap)
    assert len(r.history) == steps and all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)
    changed = [n for (n, p), (_, q) in zip(pipe.unet.named_parameters(), r.pipeline.unet.named_parameters())
               if not torch.equal(p, q)]
    assert changed and r.pipeline.vae is pipe.vae


def test_evaluate_on_sd(sd_dir, sd_task):
    pipe = uk.load_pipeline(sd_dir, device="cpu")
    same = uk.evaluate(pipe, pipe, sd_task, seeds=[0], steps=2)
    assert same["lpips_ret"] == 0.0 and same["integrity"] == 1.0
    new = uk.unlearn(pipe, sd_task, "esd-u", steps=2, lr=1e-2, batch_size=2, data_steps=2, progress=False).pipeline
    r = uk.evaluate(pipe, new, sd_task, seeds=[0], steps=2)
    assert r["lpips_ret"] > 0 and list(r["per_concept"])[0] == "frog"


@pytest.mark.slow  # the CLI in subprocesses on SD, ~25 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
def test_cli_round_trip_unlearn_save_evaluate(sd_dir, tmp_path):
    run = [sys.executable, "-m", "unlearnkit"]
    out = subprocess.run(run + ["unlearn", "--model", str(sd_dir), "--task", "sd-cat", "--method", "esd-x",
                                "--out", str(tmp_path / "run"), "--set", "steps=2", "--set", "batch_size=2",
                                "--set", "data_steps=2", "--set", "lr=0.01", "--json", "--device", "cpu"],
                         capture_output=True, text=True, env={**__import__("os").environ})
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert (tmp_path / "run" / "pipeline" / "unet").is_dir()
    loaded = uk.load_pipeline(info["pipeline"], device="cpu")
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    out = subprocess.run(run + ["evaluate", info["pipeline"], "--base", str(sd_dir), "--task", "sd-cat", "--seeds", "0",
                                "--steps", "2", "--max-retain", "2", "--json", "--device", "cpu"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["lpips_ret"] > 0 and r["lpips_net"].startswith("stlpips")


def build_tiny_clip(tok, path):
    """A tiny random CLIP saved to `path`, sharing a tiny SD's word-level tokenizer `tok` (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip_dir(sd_dir, tmp_path_factory):
    return build_tiny_clip(uk.load_pipeline(sd_dir, device="cpu").tokenizer, tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_clip_zero_shot_forget_rate_accuracy_and_clipscore(sd_dir, sd_task, tiny_clip_dir):
    from unlearnkit.evaluation import clip_zero_shot, load_clip

    pipe = uk.load_pipeline(sd_dir, device="cpu")
    r = uk.evaluate(pipe, pipe, sd_task, seeds=[0, 1], steps=2, clip=str(tiny_clip_dir))
    for k in ("forget_rate", "retain_accuracy", "base_forget_rate", "base_retain_accuracy"):
        assert 0.0 <= r[k] <= 1.0
    assert r["forget_rate"] == r["base_forget_rate"]  # identical models, identical judgements
    assert r["clip_score"] >= 0
    labels = ["cat", "frog", "dog"]
    pred = clip_zero_shot(load_clip(tiny_clip_dir), torch.rand(3, 3, 32, 32), labels)
    assert len(pred) == 3 and set(pred) <= set(labels)
    with pytest.raises(ValueError, match="could not load a CLIP model"):
        load_clip(sd_dir / "unet")


def test_the_vae_runs_in_chunks_with_the_same_images(sd_dir, monkeypatch):
    # 512-px data generation: the VAE must never see a whole group at once (docs/SD.md)
    from unlearnkit import backbone

    pipe = uk.load_pipeline(str(sd_dir))
    images = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = backbone.encode_images(pipe, images, generator=torch.Generator().manual_seed(1))
        whole = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        sizes = []
        decode = pipe.vae.decode
        monkeypatch.setattr(pipe.vae, "decode", lambda z, **k: (sizes.append(len(z)), decode(z, **k))[1])
        chunked = backbone.decode_latents(pipe, latents)
    assert latents.shape[0] == 10 and sizes == [4, 4, 2]
    assert torch.allclose(chunked, ((whole.float() + 1) / 2).clamp(0, 1), atol=1e-5)
