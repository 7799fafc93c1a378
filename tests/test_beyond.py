"""Beyond the paper: erasing several concepts in order, and the recovery attack."""

import json
import subprocess
import sys

import pytest
import torch

import unlearnkit as uk
from unlearnkit.evaluation.attacks import attack
from unlearnkit.evaluation.sequence import common_retain, evaluate_sequence, stage_tasks, unlearn_sequence

FAST = dict(steps=2, batch_size=2, data_steps=2, progress=False)


@pytest.fixture
def three_tasks():
    return [uk.world.task(w).head(3, 12) for w in ("triangle", "wavy", "red")]


def test_stages_retain_nothing_an_earlier_stage_forgot(three_tasks):
    stages = stage_tasks(three_tasks)
    assert stages[0].retain_prompts == three_tasks[0].retain_prompts
    for i, t in enumerate(stages):
        earlier = {p for s in three_tasks[:i] for p in s.forget_prompts}
        assert t.retain_prompts and not earlier & set(t.retain_prompts)
        assert len(t.retain_concepts) == len(t.retain_prompts)
    common = common_retain(three_tasks)
    assert not {p for t in three_tasks for p in t.forget_prompts} & set(common.retain_prompts)


@pytest.mark.slow  # three stages trained and evaluated, ~14 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
def test_each_stage_starts_from_the_previous_stage(tiny_pipe, three_tasks, monkeypatch):
    seen, data_seen = [], []
    import unlearnkit.train as train

    real_data = train.training_data
    monkeypatch.setattr(train, "training_data", lambda pipe, *a, **kw: data_seen.append(pipe) or real_data(pipe, *a, **kw))

    def run(pipe, task, method, **kw):
        seen.append((pipe, kw["data_from"]))
        return uk.unlearn(pipe, task, method, **kw)

    results = unlearn_sequence(tiny_pipe, three_tasks[:2], "esd-x", run=run, **FAST)
    # stage 2 starts from stage 1's model and trains on that model's images
    assert seen == [(tiny_pipe, None), (results[0].pipeline, None)]
    assert data_seen == [tiny_pipe, results[0].pipeline]
    assert not all(torch.equal(a, b) for a, b in zip(results[0].pipeline.unet.parameters(), tiny_pipe.unet.parameters()))
    seen.clear(), data_seen.clear()
    unlearn_sequence(tiny_pipe, three_tasks[:2], "esd-x", run=run, data="original", **FAST)  # the ablation
    assert [d for _, d in seen] == [None, tiny_pipe] and data_seen == [tiny_pipe, tiny_pipe]
    with pytest.raises(ValueError, match="data='base'.*'previous'"):
        unlearn_sequence(tiny_pipe, three_tasks[:2], "esd-x", data="base")
    rows = evaluate_sequence(tiny_pipe, results, three_tasks[:2], max_retain=3, seeds=[0], steps=2)
    assert [r["stage"] for r in rows] == [1, 2]
    assert list(rows[0]["forget_rates"]) == ["triangle"] and list(rows[1]["forget_rates"]) == ["triangle", "wavy"]
    assert rows[1]["lpips_ret"] > 0 and rows[1]["n_retain"] == 3
    # an earlier concept's forget rate, judged with one retain prompt per concept, is the whole evaluation's
    from dataclasses import replace

    common = common_retain(three_tasks[:2], 3)
    whole = uk.evaluate(tiny_pipe, results[1].pipeline, replace(common, relabel_concepts=[]), seeds=[0], steps=2, fid=False)
    assert rows[1]["forget_rates"]["triangle"] == whole["forget_rate"]
    for row in rows:  # every forget rate with its interval around it
        assert list(row["forget_rates_ci"]) == list(row["forget_rates"])
        assert all(lo <= row["forget_rates"][c] <= hi for c, (lo, hi) in row["forget_rates_ci"].items())
    from unlearnkit.pictures.figures import sequence_figure

    fig = sequence_figure({"ESD-x": rows})
    assert len(fig.axes) == 3 and fig.axes[2].get_title() == "forget rate of 'wavy'"


def test_attack_trains_only_the_new_word(tiny_pipe, object_task):
    before = tiny_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    r = attack(tiny_pipe, object_task, steps=3, batch_size=2, data_seeds=1, data_steps=2, sample_steps=2)
    assert len(r["history"]) == 3 and all(h > 0 for h in r["history"])
    assert 0 <= r["recovered_forget_rate"] <= 1 and r["recovered_forget_rate_ci"][0] <= r["recovered_forget_rate"]
    assert all("<concept>" in p and "triangle" not in p for p in r["attack_prompts"])
    assert torch.equal(tiny_pipe.text_encoder.get_input_embeddings().weight, before)  # the model untouched
    assert len(tiny_pipe.tokenizer) == len(before)


def test_attack_refuses_what_it_cannot_do(tiny_pipe, object_task):
    with pytest.raises(ValueError, match="unknown attack kind 'prompt'"):
        attack(tiny_pipe, object_task, kind="prompt")
    with pytest.raises(ValueError, match="already a word"):
        attack(tiny_pipe, object_task, token="circle", steps=1, batch_size=1, data_seeds=1, data_steps=2)
    sd_task = uk.get_task("sd-cat")
    from unlearnkit.evaluation import forget_hits

    with pytest.raises(ValueError, match="pass clip="):
        forget_hits(torch.zeros(1, 3, 32, 32), sd_task)


@pytest.mark.slow  # the CLI in subprocesses, ~37 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
def test_cli_unlearns_several_words_in_order_and_attacks(tiny_pipe, tmp_path):
    model = tmp_path / "tiny"
    tiny_pipe.save_pretrained(model)
    cmd = [sys.executable, "-m", "unlearnkit", "unlearn", "--model", str(model), "--method", "esd-x", "--out",
           str(tmp_path / "run"), "--forget", "triangle", "--forget", "wavy", "--device", "cpu", "--json",
           "--set", "steps=1", "--set", "batch_size=2", "--set", "data_steps=2", "--set", "data_seeds=1"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["forgot"] == ["triangle", "wavy"] and r["steps_done"] == 2 and "forget_checks" not in r
    assert (tmp_path / "run" / "stage-1" / "checkpoint.pt").exists() and (tmp_path / "run" / "stage-2").exists()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["forget"] for h in history] == ["triangle", "wavy"]
    bad = subprocess.run([sys.executable, "-m", "unlearnkit", "attack", str(tmp_path / "run" / "pipeline"), "--base",
                          str(model), "--forget", "triangle", "--forget", "wavy"], capture_output=True, text=True)
    assert bad.returncode == 2 and "takes one --forget word" in bad.stderr
