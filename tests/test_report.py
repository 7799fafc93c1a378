"""The integrity report (`uk.report`, `unlearnkit report`): prompt files and their tasks, the numbers against what
`evaluate` measures, the files it writes, a kohya LoRA put on a tiny Stable Diffusion, and one clear error for each
bad input. Tiny random models, 1 seed, 2 DDIM steps, a handful of prompts: seconds each."""

import copy
import json

import pytest
import torch

import unlearnkit as uk
from unlearnkit import world
from unlearnkit.app.cli import main
from unlearnkit.models import build_pipeline
from unlearnkit.prompt_files import NO_FORGET, parse_prompts, prompt_task, read_prompts, shipped_lists
from unlearnkit.sd import build_tiny_sd

from test_export import _lora_run  # a params="lora" run: the LoRA fused, the adapter apart
from test_sd import build_tiny_clip  # a tiny random CLIP on the tiny SD's tokenizer

FAST = dict(seeds=[0], steps=2, device="cpu")
CLI_FAST = ["--seeds", "0", "--steps", "2", "--device", "cpu"]
WORLD_PROMPTS = ["a red triangle, plain style", "a blue triangle, wavy style", "a red square, plain style",
                 "a green square, striped style", "a blue circle, dotted style", "a grey star, grainy style"]
SD_PROMPTS = ["a photo of a cat", "a photo of a cat in the grass", "a photo of a frog", "a photo of a dog",
              "a photo of a dog on a table"]
PNG = b"\x89PNG\r\n\x1a\n"


def _perturbed(pipe, scale=0.02, seed=1):
    other = copy.deepcopy(pipe)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders: a tiny embedded model, a perturbed copy, a tiny SD with a LoRA run (its pipeline and a kohya file),
    and the prompt files."""
    root = tmp_path_factory.mktemp("report")
    base = build_pipeline("tiny", seed=0)
    base.save_pretrained(root / "tiny")
    _perturbed(base).save_pretrained(root / "tiny-edited")
    sd = build_tiny_sd(SD_PROMPTS + [NO_FORGET])
    sd.save_pretrained(root / "sd")
    run = _lora_run(sd)
    run.pipeline.save_pretrained(root / "sd-run")
    uk.export(run, root / "sd-lora.safetensors", format="kohya")
    (root / "world.txt").write_text("# a few of the world's prompts\n\n" + "\n".join(WORLD_PROMPTS) + "\n")
    (root / "sd.txt").write_text("\n".join(SD_PROMPTS) + "\n")
    return root


# prompt files ---------------------------------------------------------------------------------------------------


def test_a_plain_prompt_file_skips_blanks_comments_and_repeats():
    plist = parse_prompts("# comment\n\na cat\n  a dog  \n# another\na cat\n", "f.txt")
    assert plist.prompts == ["a cat", "a dog"] and plist.slots == {}


def test_a_template_file_expands_every_combination_first_list_outermost():
    plist = parse_prompts("template: An {object} image in {style} style\nobject: dog, cat\nstyle: Van Gogh, Monet\n")
    assert plist.prompts == ["An dog image in Van Gogh style", "An dog image in Monet style",
                             "An cat image in Van Gogh style", "An cat image in Monet style"]
    assert plist.slots["An cat image in Monet style"] == {"object": "cat", "style": "Monet"}


def test_the_shipped_lists_are_the_worlds_and_the_sd_tasks_prompts():
    assert {"embedded", "sd-painters", "sd-objects"} <= set(shipped_lists())
    assert read_prompts("embedded").prompts == world.all_prompts()  # the same 150 prompts, in the same order
    vangogh, cat = uk.get_task("sd-vangogh"), uk.get_task("sd-cat")
    painters = read_prompts("sd-painters").prompts
    assert len(painters) == 36 and set(painters) <= set(vangogh.forget_prompts + vangogh.retain_prompts)
    objects = read_prompts("sd-objects").prompts
    assert len(objects) == 42 and set(objects) <= set(cat.forget_prompts + cat.retain_prompts)


def test_the_task_splits_by_whole_word_neighbour_first_concepts_from_the_slot():
    plist = read_prompts("sd-painters")
    task = prompt_task(plist, forget="Van Gogh", neighbour="Vermeer")
    assert len(task.forget_prompts) == 6 and all("Van Gogh" in p for p in task.forget_prompts)
    assert task.retain_concepts[:6] == ["Vermeer"] * 6 and set(task.retain_concepts) == {
        "Vermeer", "Rembrandt", "Claude Monet", "Pablo Picasso", "Katsushika Hokusai"}
    assert task.held_out == [] and task.retain_eval == task.retain_prompts  # a list of one's own is measured whole
    # whole words only: 'cat' is not in 'category'; without a template the concept is the neighbour or 'other'
    task = prompt_task(parse_prompts("a cat\na category\na frog\n"), forget="cat", neighbour="frog")
    assert task.forget_prompts == ["a cat"] and task.retain_prompts == ["a frog", "a category"]
    assert task.retain_concepts == ["frog", "other"]


def test_on_the_worlds_prompts_the_task_is_the_built_in_one():
    task, builtin = prompt_task(read_prompts("embedded"), "triangle", "square"), world.task("triangle", "square")
    assert task.retain_prompts == builtin.retain_prompts and task.held_out == builtin.held_out
    some = prompt_task(parse_prompts("\n".join(WORLD_PROMPTS)), "triangle", "square")
    assert some.kind == "object" and some.held_out == [] and some.retain_concepts[:2] == ["square", "square"]
    none = prompt_task(read_prompts("embedded"))
    assert none.forget_prompts == [NO_FORGET] and none.retain_eval == world.all_prompts()


# the report -----------------------------------------------------------------------------------------------------


def test_a_model_against_itself_reports_lpips_0_and_i_1_exactly(models, tmp_path):
    r = uk.report(models / "tiny", models / "tiny", out=tmp_path / "same", prompts=models / "world.txt", **FAST)
    assert r["lpips_ret"]["value"] == 0.0 and r["lpips_ret"]["ci"] == [0.0, 0.0]
    assert r["integrity"]["value"] == 1.0 and r["integrity"]["ci"] == [1.0, 1.0]
    assert all(p["lpips"] == 0.0 for p in r["retain_pairs"]) and len(r["retain_pairs"]) == len(WORLD_PROMPTS)
    assert "not_measured" in r["forget_rate"] and "no --forget" in r["forget_rate"]["not_measured"]
    page = (tmp_path / "same" / "report.md").read_text()
    assert "| I = 1 − LPIPS_ret (↑) | 1.0000 [1.0000, 1.0000] |" in page and "Forget rate: not measured" in page


def test_a_perturbed_copy_changes_lpips_and_with_forget_gets_a_forget_rate(models, tmp_path):
    r = uk.report(models / "tiny", models / "tiny-edited", out=tmp_path / "r", prompts=models / "world.txt",
                  forget="triangle", neighbour="square", **FAST)
    lpips = r["lpips_ret"]
    assert lpips["value"] > 0 and lpips["ci"][0] <= lpips["value"] <= lpips["ci"][1]
    assert r["integrity"]["value"] == pytest.approx(1 - lpips["value"], abs=1e-12)
    # the evaluation it reports: the same numbers as evaluate on the same task
    base, edited = uk.load_pipeline(models / "tiny", device="cpu"), uk.load_pipeline(models / "tiny-edited",
                                                                                       device="cpu")
    task = prompt_task(read_prompts(models / "world.txt"), "triangle", "square")
    ev = uk.evaluate(base, edited, task, seeds=[0], steps=2)
    assert lpips["value"] == pytest.approx(ev.lpips_ret, abs=1e-6) and r["prompts"]["n_forget"] == 2
    per = r["per_concept"]
    assert per[0]["concept"] == "square" and per[0]["neighbour"] and per[0]["pairs"] == 2
    assert sum(c["pairs"] for c in per) == lpips["pairs"] == 4
    for c in per:
        assert c["ci"][0] - 1e-9 <= c["lpips_ret"] <= c["ci"][1] + 1e-9
    fr = r["forget_rate"]
    assert 0 <= fr["value"] <= 1 and fr["ci"][0] <= fr["value"] <= fr["ci"][1] and 0 <= fr["base"] <= 1
    assert fr["judge"] == "the embedded world's concept classifier" and fr["images"] == 2
    assert "value" in r["retain_accuracy"] and "value" in r["fid"]
    assert r["figures"] == {"worst_pairs": "worst-pairs.png", "forget_pairs": "forget-pairs.png"}
    assert r["worst_pairs"][0]["lpips"] == max(p["lpips"] for p in r["retain_pairs"])


def test_the_cli_writes_the_page_the_numbers_and_the_figures(models, tmp_path, capsys):
    out = tmp_path / "report"
    inputs = ["report", str(models / "tiny"), str(models / "tiny-edited"), "--prompts", str(models / "world.txt"),
              "--forget", "triangle", "--neighbour", "square", "--forget-seeds", "3,4", *CLI_FAST]
    argv = [*inputs, "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == ["forget-pairs.png", "report.json", "report.md", "worst-pairs.png"]
    data = json.loads((out / "report.json").read_text())
    assert summary["lpips_ret"] == data["lpips_ret"]["value"] > 0 and summary["report"] == str(out / "report.md")
    assert data["settings"]["forget_seeds"] == [3, 4] and data["forget_rate"]["images"] == 2 * 2  # 2 prompts × 2
    page = (out / "report.md").read_text()
    for text in ("](worst-pairs.png)", "](forget-pairs.png)", "square (neighbour)", data["settings"]["lpips_net"],
                 "forget rate (↓)", "2 steps", str(models / "tiny-edited")):
        assert text in page, text
    for png in ("worst-pairs.png", "forget-pairs.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left beside it
    # a second report is refused without --overwrite (the first kept whole), replaces it with
    assert main(argv) == 2 and "exists and is not empty" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text()) == data
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    # --overwrite never deletes a folder that holds no report
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main([*inputs, "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "not an earlier report" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    # each forget image its own noise: said in the JSON and on the page; the same retain numbers
    assert main([*inputs, "--out", str(tmp_path / "own"), "--forget-noise", "per-image", "--json"]) == 0
    capsys.readouterr()
    own = json.loads((tmp_path / "own" / "report.json").read_text())
    assert own["settings"]["forget_noise"] == "per-image" and data["settings"]["forget_noise"] == "shared"
    assert own["lpips_ret"] == data["lpips_ret"] and own["forget_rate"]["images"] == 4
    assert "each forget image its own noise" in (tmp_path / "own" / "report.md").read_text()


def test_a_kohya_lora_on_a_tiny_sd_reports_as_its_run_does(models, tmp_path, capsys):
    argv = ["report", str(models / "sd"), "--lora", str(models / "sd-lora.safetensors"), "--prompts",
            str(models / "sd.txt"), "--forget", "cat", "--neighbour", "dog", "--guidance", "7.5", *CLI_FAST, "--json"]
    assert main(argv + ["--out", str(tmp_path / "lora")]) == 0
    capsys.readouterr()
    via_lora = json.loads((tmp_path / "lora" / "report.json").read_text())
    assert via_lora["models"]["lora"] == str(models / "sd-lora.safetensors") and via_lora["lpips_ret"]["value"] > 0
    assert via_lora["per_concept"][0]["concept"] == "dog"
    # the LoRA fused on the base draws what the run's own pipeline draws: the same LPIPS pair by pair
    run = uk.report(models / "sd", models / "sd-run", out=tmp_path / "run", prompts=models / "sd.txt", forget="cat",
                    neighbour="dog", guidance_scale=7.5, **FAST)
    for a, b in zip(via_lora["retain_pairs"], run["retain_pairs"]):
        assert a["prompt"] == b["prompt"] and a["lpips"] == pytest.approx(b["lpips"], abs=1e-3)
    # off the embedded world, without --clip: no judge, and the page says why
    assert "not_measured" in via_lora["forget_rate"] and "--clip" in via_lora["forget_rate"]["not_measured"]
    assert "FID: not measured" in (tmp_path / "lora" / "report.md").read_text()


def test_off_the_world_clip_judges_forgetting_and_gives_clipscore(models, tmp_path, capsys):
    # the report's CLIP path: a tiny random CLIP (its judgements are noise, their bookkeeping is not)
    clip = build_tiny_clip(uk.load_pipeline(models / "sd", device="cpu").tokenizer, tmp_path / "clip")
    argv = ["report", str(models / "sd"), "--lora", str(models / "sd-lora.safetensors"), "--prompts",
            str(models / "sd.txt"), "--forget", "cat", "--neighbour", "dog", "--clip", str(clip), *CLI_FAST,
            "--out", str(tmp_path / "clip-report"), "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    r = json.loads((tmp_path / "clip-report" / "report.json").read_text())
    n_forget = sum("cat" in p for p in SD_PROMPTS)  # one seed
    assert 0.0 <= r["forget_rate"]["value"] <= 1.0 and "not_measured" not in r["forget_rate"]
    assert r["forget_rate"]["images"] == n_forget and r["forget_rate"]["judge"] == "CLIP zero-shot over the task's concepts"
    hits = r["forget_rate"]["value"] * n_forget  # a share of the forget images: a whole number of them
    assert hits == pytest.approx(round(hits))
    assert 0.0 <= r["retain_accuracy"]["value"] <= 1.0
    assert r["clip_score"]["value"] >= 0 and r["clip_score"]["model"] == str(clip)
    page = (tmp_path / "clip-report" / "report.md").read_text()
    assert "CLIP zero-shot" in page and "CLIPScore" in page


def test_a_lora_folder_a_kohya_file_and_a_run_folder_fuse_to_the_runs_weights(models, tmp_path):
    from unlearnkit.evaluation.report import with_lora
    from unlearnkit.models import open_model

    sd = build_tiny_sd(SD_PROMPTS + [NO_FORGET])
    run = _lora_run(sd)
    uk.export(run, tmp_path / "run" / "lora", format="lora")  # a LoRA run's folder keeps its adapter in lora/
    base = open_model(models / "sd", "BASE", device="cpu")
    for lora in (models / "sd-lora.safetensors", tmp_path / "run" / "lora", tmp_path / "run"):
        fused = with_lora(base, lora, "sd")
        for (name, p), q in zip(fused.unet.named_parameters(), run.pipeline.unet.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=f"{lora}: {name}")
    assert not getattr(base.unet, "peft_config", None)  # the base itself is untouched: no adapter, the same weights
    assert all(torch.equal(p, q) for p, q in zip(base.unet.parameters(), sd.unet.parameters()))


# bad inputs: one line, exit 2, nothing written ------------------------------------------------------------------


def _bad_cases(models, tmp):
    (tmp / "empty.txt").write_text("# nothing here\n\n")
    (tmp / "slot.txt").write_text("template: a {colour} {object}\ncolour: red, blue\n")
    tiny, edited, sd, world_txt = (str(models / n) for n in ("tiny", "tiny-edited", "sd", "world.txt"))
    kohya = str(models / "sd-lora.safetensors")
    return {
        "unknown path": ([tiny, str(tmp / "missing")], "EDITED '" + str(tmp / "missing") + "' does not exist"),
        "mismatched models": ([tiny, sd, "--prompts", world_txt], f"BASE {tiny!r} and EDITED {sd!r} do not match"),
        "empty prompt file": ([tiny, edited, "--prompts", str(tmp / "empty.txt")], "holds no prompt"),
        "missing prompt file": ([tiny, edited, "--prompts", str(tmp / "nope.txt")], "does not exist"),
        "forget word in no prompt": ([tiny, edited, "--prompts", world_txt, "--forget", "dragon"],
                                     "no prompt of"),
        "undefined slot": ([tiny, edited, "--prompts", str(tmp / "slot.txt")], "which no list defines"),
        "neighbour without forget": ([tiny, edited, "--prompts", world_txt, "--neighbour", "square"], "needs --forget"),
        "edited and lora": ([tiny, edited, "--lora", kohya], "not both"),
        "neither edited nor lora": ([tiny], "one of the two"),
        "lora of another model": ([tiny, "--lora", kohya, "--prompts", world_txt],
                                  f"--lora {kohya!r} does not fit BASE"),
    }


def test_each_bad_input_is_one_clear_line_and_exit_2(models, tmp_path, capsys):
    for name, (args, message) in _bad_cases(models, tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        assert main(["report", *args, "--out", str(out), *CLI_FAST]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("unlearnkit report: error:"), (name, err)
        assert message in err, (name, err)
        assert not out.exists(), name
