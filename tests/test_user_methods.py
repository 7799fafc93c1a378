"""Two methods of one's own, written as a user would, through `uk.unlearn`, `run_method` and the CLI (`--import`).

The methods live in `tests/user_methods.py`, a file of one's own; each test registers them afresh (a fixture) and
removes them afterwards, so the kit's own parametrised tests never see them.

`uce-lite` is a closed-form edit (`steps=0`: no images, no optimiser, no backward), `ca-lite` takes its target from
the *current* model (`ctx.current`); their equations are in that file. The kit's own UCE and Concept Ablation
(`methods/uce.py`, `methods/ca.py`) are tested against their authors' code in tests/test_parity.py.
"""

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import METHODS, Method, method_code_hash, register_method

FAST = dict(batch_size=2, data_steps=2, progress=False)
USER_METHODS = Path(__file__).parent / "user_methods.py"


def _load(path: Path, name: str | None = None):
    # import a .py file as a module, as `unlearnkit --import FILE` does: its register_method calls run
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def user_methods():
    module = _load(USER_METHODS)
    yield module
    for name in ("uce-lite", "ca-lite"):
        METHODS.pop(name, None)
    sys.modules.pop("user_methods", None)


def test_a_closed_form_method_runs_with_steps_0_no_images_no_optimiser(tiny_pipe, object_task, monkeypatch):
    import unlearnkit.train as train

    monkeypatch.setattr(train, "training_data", lambda *a, **k: pytest.fail("a closed-form run generated images"))
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: pytest.fail("a closed-form run built an optimiser"))
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    result = uk.unlearn(tiny_pipe, object_task, "uce-lite", progress=False)
    assert result.history == [] and result.config.steps == 0
    after = dict(result.pipeline.unet.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed == set(result.state["edited"])
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    # the edit does what its equation says: W' minimises the objective, so its gradient (the normal equations) is 0,
    # the objective fell, and the forget tokens moved towards their anchors' values
    # the preserve set is the training part of the retain prompts: the held-out part never reaches a method
    prompts = {"forget": object_task.forget_prompts, "anchor": object_task.anchor_prompts,
               "retain": object_task.retain_train}
    data = {k: uk.backbone.encode_prompts(tiny_pipe, v).flatten(0, 1).double() for k, v in prompts.items()}
    c, c_star, p = data["forget"], data["anchor"], data["retain"]
    cfg = result.config
    for name in sorted(changed)[:2]:
        w0, w1 = before[name].double(), after[name].detach().double()

        def objective(w):
            return (((c @ w.T - c_star @ w0.T) ** 2).sum() + cfg.preserve_weight * ((p @ w.T - p @ w0.T) ** 2).sum()
                    + cfg.ridge * ((w - w0) ** 2).sum())

        grad = (c @ w1.T - c_star @ w0.T).T @ c + cfg.preserve_weight * (p @ w1.T - p @ w0.T).T @ p + cfg.ridge * (w1 - w0)
        assert grad.norm() < 1e-4 * (c_star @ w0.T).T.matmul(c).norm()
        assert objective(w1) < 0.5 * objective(w0)
        assert (c @ w1.T - c_star @ w0.T).norm() < (c @ w0.T - c_star @ w0.T).norm()


def test_concept_ablation_takes_its_target_from_the_current_model(tiny_pipe, object_task):
    kw = dict(steps=2, lr=1e-3, **FAST)
    ca = uk.unlearn(tiny_pipe, object_task, "ca-lite", **kw)
    # step 1: the current model is the base, so the loss is OVW w/o L_help's on anchor images (same draws)
    ovw = uk.unlearn(tiny_pipe, object_task, "ovw-nohelp", x_t="anchor", **kw)
    assert ca.history[0]["loss"] == pytest.approx(ovw.history[0]["loss"], rel=1e-5)
    # step 2: the current model has moved, the frozen base has not: the two targets differ
    assert ca.history[1]["loss"] != pytest.approx(ovw.history[1]["loss"], rel=1e-4)
    assert any(not torch.equal(p, q) for p, q in zip(ca.pipeline.unet.parameters(), tiny_pipe.unet.parameters()))


@pytest.mark.slow  # a CLI run in process and a cached run, ~16 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
def test_user_methods_run_through_run_method_and_the_cli(tiny_pipe, object_task, tmp_path, capsys):
    from unlearnkit.app.cli import build_parser, main
    from unlearnkit.experiments import profile, run_method

    run = run_method(tiny_pipe, object_task, "uce-lite", profile("smoke"), cache_dir=tmp_path, progress=False)
    assert run.config.steps == 0 and run.state["edited"]  # a profile's steps do not turn a closed form into training
    ca = run_method(tiny_pipe, object_task, "ca-lite", profile("smoke"), cache_dir=tmp_path, progress=False)
    assert len(ca.history) == 2
    # the CLI: --import the user's file, then its methods are known (and listed in --help)
    METHODS.pop("ca-lite"), METHODS.pop("uce-lite")
    code = main(["--import", str(USER_METHODS), "unlearn", "--method", "ca-lite", "--out", str(tmp_path / "cli"),
                 "--forget", "triangle", "--set", "steps=1", "--set", "batch_size=2", "--set", "data_steps=2", "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["method"] == "ca-lite" and "ca-lite" in METHODS
    sub = build_parser()._subparsers._group_actions[0].choices["unlearn"]
    assert "ca-lite" in sub.format_help() and "uce-lite" in sub.format_help()
    assert (tmp_path / "cli" / "pipeline").is_dir() and (tmp_path / "cli" / "checkpoint.pt").exists()
    # a module that does not import: one line naming it
    assert main(["--import", "no_such_module_here", "unlearn", "--method", "x", "--out", str(tmp_path / "x")]) == 2
    assert "--import no_such_module_here" in capsys.readouterr().err


METHOD_SOURCE = '''
from dataclasses import dataclass
from unlearnkit import losses
from unlearnkit.methods import Method, UnlearnConfig, register_method


@dataclass
class PushConfig(UnlearnConfig):
    lr: float = 1e-3


@register_method("push")
class Push(Method):
    config_class = PushConfig

    def step(self, ctx, forget):
        pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])
        base = ctx.frozen(forget.x_t, forget.t, ctx.e_f[forget.idx])
        return lambda out: losses.regression_loss(out[pred], SCALE * out[base])
'''


def test_editing_a_methods_code_invalidates_its_cached_run(tiny_pipe, object_task, tmp_path, monkeypatch):
    from unlearnkit.experiments import cache, profile, run_method

    trained, train = [], cache.train
    monkeypatch.setattr(cache, "train", lambda *a, **k: trained.append(1) or train(*a, **k))
    source = tmp_path / "my_push_method.py"
    try:
        source.write_text(METHOD_SOURCE.replace("SCALE", "-1.0"))
        _load(source)
        first_hash = method_code_hash("push")
        a = run_method(tiny_pipe, object_task, "push", profile("smoke"), cache_dir=tmp_path, progress=False)
        again = run_method(tiny_pipe, object_task, "push", profile("smoke"), cache_dir=tmp_path, progress=False)
        assert len(trained) == 1 and again.history == a.history  # the second call loaded the cached run
        source.write_text(METHOD_SOURCE.replace("SCALE", "-2.00"))  # an edit of the method's code, its config the same
        _load(source)
        assert method_code_hash("push") != first_hash
        b = run_method(tiny_pipe, object_task, "push", profile("smoke"), cache_dir=tmp_path, progress=False)
        assert len(trained) == 2 and b.history[0]["loss"] != a.history[0]["loss"]
        assert b.code != a.code
    finally:
        METHODS.pop("push", None)
        sys.modules.pop("my_push_method", None)


def test_resuming_under_other_run_options_is_the_same_run(tiny_pipe, object_task, tmp_path):
    kw = dict(steps=2, **FAST)

    def crash(step, unet):
        if step == 2:  # after the checkpoint of step 1, before that of step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        uk.unlearn(tiny_pipe, object_task, "ca-lite", out_dir=tmp_path, checkpoint_every=1, callback=crash, **kw)
    # the same run, resumed with gradient checkpointing (how it runs, not what it learns): accepted
    resumed = uk.unlearn(tiny_pipe, object_task, "ca-lite", out_dir=tmp_path, gradient_checkpointing=True, **kw)
    straight = uk.unlearn(tiny_pipe, object_task, "ca-lite", **kw)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    for p, q in zip(resumed.pipeline.unet.parameters(), straight.pipeline.unet.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="belongs to another run.*config"):
        uk.unlearn(tiny_pipe, object_task, "ca-lite", out_dir=tmp_path, lr=5e-4, **kw)


@pytest.mark.parametrize("bad, message", [
    (lambda ctx, forget: torch.zeros(()), "must return loss\\(out\\).*returned a Tensor"),
    (lambda ctx, forget: (lambda out: 3), "scalar tensor.*returned int"),
    (lambda ctx, forget: (lambda out: torch.zeros(2, requires_grad=True)), "returned shape \\(2,\\)"),
    (lambda ctx, forget: (lambda out: torch.zeros(())), "no gradient.*steps=0"),
    (lambda ctx, forget: (lambda out: out[("train", 5)]), "out\\[\\('train', 5\\)\\].*handle"),
])
def test_a_broken_method_gets_an_error_that_names_the_contract(tiny_pipe, object_task, bad, message):
    class Broken(Method):
        def step(self, ctx, forget):
            return bad(ctx, forget)

    register_method("broken")(Broken)
    try:
        with pytest.raises((TypeError, ValueError, KeyError), match=message):
            uk.unlearn(tiny_pipe, object_task, "broken", steps=1, **FAST)
    finally:
        METHODS.pop("broken")


def test_param_sets_are_name_predicates(tiny_pipe):
    from unlearnkit.train import select_params

    kv = {n for n, _ in select_params(tiny_pipe.unet, "xattn-kv")}
    assert kv and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in kv)
    assert kv == {n for n, _ in select_params(tiny_pipe.unet, r"re:attn2\.to_[kv]\.")}
    with pytest.raises(ValueError, match="selects no parameter"):
        select_params(tiny_pipe.unet, "re:no_such_layer")
    with pytest.raises(ValueError, match="unknown params 'attn3'.*re:<regex>"):
        uk.methods.make_config("ovw", params="attn3")


def test_an_installed_packages_methods_come_in_through_the_entry_point_group(tmp_path, monkeypatch):
    from unlearnkit.methods import base

    (tmp_path / "kit_plugin_demo.py").write_text(METHOD_SOURCE.replace("SCALE", "-1.0").replace('"push"', '"plugin-push"'))
    dist = tmp_path / "kit_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[unlearnkit.methods]\nplugin = kit_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    try:
        assert uk.methods.canonical("plugin-push") == "plugin-push"  # found on first use of an unknown name
    finally:
        METHODS.pop("plugin-push", None)
        sys.modules.pop("kit_plugin_demo", None)


def test_every_built_in_method_has_a_code_hash_of_its_own_module():
    hashes = {m: method_code_hash(m) for m in METHODS if not m.endswith("-lite")}
    assert hashes["esd-x"] == hashes["esd-u"]  # one class, two presets (the preset is in the config)
    assert len({hashes[m] for m in ("ga", "esd-x", "salun", "sa", "saddle", "ovw")}) == 6


@pytest.fixture
def object_task():
    return replace(uk.get_task("object").head(3, 4), name="object-small")
