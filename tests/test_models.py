import re

import pytest
import torch

import unlearnkit as uk
from unlearnkit import world
from unlearnkit.backbone import encode_prompts
from unlearnkit.models import build_tokenizer, load_pipeline
from unlearnkit.sampling import initial_noise, sample_pairs


def test_tokenizer_knows_exactly_the_world():
    tok = build_tokenizer()
    ids = tok("a red circle, striped style").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


def test_unknown_word_is_a_value_error_listing_known_words(tiny_pipe):
    with pytest.raises(ValueError, match=r"unknown word 'hexagon'.*circle"):
        encode_prompts(tiny_pipe, ["a red hexagon, plain style"])
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        uk.sample(tiny_pipe, ["a purple circle, plain style"], [0], steps=1)


def test_save_load_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "p")
    loaded = load_pipeline(tmp_path / "p", device="cpu")
    assert type(loaded).__name__ == "UnlearnkitPipeline"
    prompts = ["a red circle, plain style"]
    a = uk.sample(tiny_pipe, prompts, [0, 1], steps=2, guidance_scale=2.0)
    b = uk.sample(loaded, prompts, [0, 1], steps=2, guidance_scale=2.0)
    assert torch.equal(a, b)


def test_sample_shape_order_and_range(tiny_pipe):
    prompts = [world.prompt("circle", "red", "plain"), world.prompt("star", "blue", "dotted")]
    x = uk.sample(tiny_pipe, prompts, [0, 1, 2], steps=2)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    # prompt-major: image 4 is (prompts[1], seed 1)
    alone = uk.sample(tiny_pipe, [prompts[1]], [1], steps=2)
    # equal up to float reassociation of a different batch size (an untrained UNet amplifies it)
    assert (x[4] - alone[0]).abs().mean() < 1e-3 and (x[3] - alone[0]).abs().mean() > 0.05


def test_initial_noise_depends_only_on_the_seed(tiny_pipe):
    assert torch.equal(initial_noise(7, (3, 32, 32)), initial_noise(7, (3, 32, 32)))
    assert not torch.equal(initial_noise(7, (3, 32, 32)), initial_noise(8, (3, 32, 32)))
    p = world.prompt("cross", "green", "striped")
    others = [world.prompt(o, "red", "plain") for o in world.OBJECTS]
    alone = sample_pairs(tiny_pipe, [p], [5], steps=2)
    mixed = sample_pairs(tiny_pipe, others + [p], list(range(len(others))) + [5], steps=2, batch_size=3)
    assert (alone[0] - mixed[-1]).abs().mean() < 1e-3


def test_bad_sampling_inputs(tiny_pipe):
    with pytest.raises(ValueError, match="seeds is empty"):
        uk.sample(tiny_pipe, ["a red circle, plain style"], [])
    with pytest.raises(ValueError, match="steps must be > 0"):
        uk.sample(tiny_pipe, ["a red circle, plain style"], [0], steps=0)
    with pytest.raises(ValueError, match="not one string"):
        uk.sample(tiny_pipe, "a red circle, plain style", [0])


def test_load_pipeline_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty", device="cpu")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_pipeline(f, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            load_pipeline(tmp_path / "empty", device="cuda")


def test_base_train_resumes(tmp_path):
    from unlearnkit.basetrain import train_base

    kw = dict(size="tiny", steps=4, batch_size=4, warmup=1, checkpoint_every=2, progress=False)
    full = train_base(tmp_path / "a", **kw)
    train_base(tmp_path / "b", **{**kw, "steps": 4})
    a = load_pipeline(full["pipeline"], device="cpu")
    b = load_pipeline(tmp_path / "b" / "pipeline", device="cpu")
    for (n, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(p, q), n


def test_a_missing_local_path_is_one_line_naming_it(capsys):
    from unlearnkit.app.cli import main

    for path in ("./no-such-run", "runs/x/pipeline", "model.safetensors"):
        with pytest.raises(ValueError, match=f"'{re.escape(path)}' does not exist"):
            uk.load_pipeline(path, device="cpu")
    assert main(["evaluate", "./no-such-run", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'./no-such-run' does not exist" in err and err.count("\n") == 0 and "Hub" not in err


def test_cli_evaluate_reads_the_part_and_the_forget_seeds_it_is_told(capsys, tmp_path, monkeypatch):
    import json

    from unlearnkit.app.cli import main

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path))
    argv = ["evaluate", "base", "--base", "base", "--task", "object", "--seeds", "0", "--forget-seeds", "3,4",
            "--steps", "1", "--max-retain", "2", "--device", "cpu", "--json"]
    assert main(argv + ["--on", "train"]) == 0
    out = json.loads(capsys.readouterr().out)
    task = uk.get_task("object")
    assert out["on"] == "train" and out["forget_seeds"] == [3, 4] and out["n_forget"] == 2 * len(task.forget_prompts)
    assert [p["prompt"] for p in out["retain_pairs"]] == task.retain_train[:2] and out["lpips_ret"] == 0
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["on"] == "eval"
