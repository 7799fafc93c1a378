import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import METHODS, make_config

FAST = dict(steps=2, batch_size=2, data_steps=2, progress=False)  # 2 steps, 2 DDIM steps for data


def _state(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_two_finite_steps_and_leaves_the_base_untouched(tiny_pipe, object_task, method):
    before = _state(tiny_pipe.unet)
    closed = make_config(method).steps == 0  # a closed-form method (UCE): its edit, no step
    kw = {k: v for k, v in FAST.items() if k != "steps"} if closed else dict(FAST)
    if method == "sa":
        kw["fisher_samples"] = 1  # the authors' Fisher: 1000 passes an example (32 by default)
    result = uk.unlearn(tiny_pipe, object_task, method, **kw)
    assert len(result.history) == (0 if closed else 2)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.pipeline.unet is not tiny_pipe.unet
    assert all(torch.equal(before[n], p) for n, p in tiny_pipe.unet.named_parameters())
    changed = [n for n, p in result.pipeline.unet.named_parameters() if not torch.equal(before[n], p)]
    assert changed, f"{method} changed no parameter"


def _fixed_batch(pipe, task):
    from unlearnkit.backbone import encode_prompts

    g = torch.Generator().manual_seed(123)
    x_t = torch.randn(3, 3, 32, 32, generator=g)
    t = torch.tensor([400, 650, 900])
    return x_t, t, encode_prompts(pipe, task.forget_prompts[:3]), encode_prompts(pipe, [""] * 3)


@pytest.mark.slow  # ESD-u (the authors' chain) 10 steps and GA 6 steps, ~26 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
@torch.no_grad()
def test_losses_decrease_where_they_should(tiny_pipe, object_task):
    from unlearnkit import losses

    x_t, t, e_f, e_null = _fixed_batch(tiny_pipe, object_task)
    base = tiny_pipe.unet
    target = losses.esd_target(base(x_t, t, e_null).sample, base(x_t, t, e_f).sample, eta=1.0)
    with torch.enable_grad():
        new = uk.unlearn(tiny_pipe, object_task, "esd-u", steps=10, lr=1e-4, batch_size=4, data_steps=2,
                         progress=False).pipeline.unet
    # ESD's regression onto the negatively guided target: closer after training on held-out noise
    before = losses.regression_loss(base(x_t, t, e_f).sample, target).item()
    after = losses.regression_loss(new(x_t, t, e_f).sample, target).item()
    assert after < 0.5 * before
    # GA ascends the denoising loss on forget prompts
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
    with torch.enable_grad():
        ga = uk.unlearn(tiny_pipe, object_task, "ga", steps=6, lr=1e-3, batch_size=4, data_steps=2,
                        progress=False).pipeline.unet
    from unlearnkit.backbone import training_scheduler

    noisy = training_scheduler(tiny_pipe).add_noise(x_t, noise, t)
    assert losses.simple_loss(ga(noisy, t, e_f).sample, noise) > losses.simple_loss(base(noisy, t, e_f).sample, noise)


def test_esd_x_changes_only_cross_attention(tiny_pipe, object_task):
    before = _state(tiny_pipe.unet)
    unet = uk.unlearn(tiny_pipe, object_task, "esd-x", **FAST).pipeline.unet
    for n, p in unet.named_parameters():
        if "attn2" not in n:
            assert torch.equal(before[n], p), n
    assert any(not torch.equal(before[n], p) for n, p in unet.named_parameters() if "attn2" in n)


def test_esd_u_leaves_cross_attention_alone(tiny_pipe, object_task):
    before = _state(tiny_pipe.unet)
    unet = uk.unlearn(tiny_pipe, object_task, "esd-u", **FAST).pipeline.unet
    assert all(torch.equal(before[n], p) for n, p in unet.named_parameters() if "attn2" in n)


def test_salun_leaves_masked_out_parameters_bit_identical(tiny_pipe, object_task):
    before = _state(tiny_pipe.unet)
    unet = uk.unlearn(tiny_pipe, object_task, "salun", mask_ratio=0.3, **FAST).pipeline.unet
    total = sum(p.numel() for p in unet.parameters())
    changed = sum((before[n] != p).sum().item() for n, p in unet.named_parameters())
    assert 0 < changed <= 0.3 * total + 1


def test_sa_state_holds_a_non_negative_cached_fisher(tiny_pipe, object_task, tmp_path):
    kw = dict(steps=1, batch_size=2, data_steps=2, fisher="one-t", fisher_samples=3, progress=False, cache_dir=tmp_path)
    first = uk.unlearn(tiny_pipe, object_task, "sa", **kw).state
    fisher = first["fisher"]
    assert len(fisher) == len(first["names"]) == len(list(tiny_pipe.unet.parameters()))
    assert all((f >= 0).all() for f in fisher) and sum(f.sum() for f in fisher) > 0
    assert len(list((tmp_path / "fisher").iterdir())) == 1
    again = uk.unlearn(tiny_pipe, object_task, "sa", **kw).state["fisher"]  # loaded from the cache
    assert all(torch.equal(a, b) for a, b in zip(fisher, again))


# esd-x (its authors' chain: 13 s) in the slow pass; saddle and salun keep resume in the default run
@pytest.mark.parametrize("method", [pytest.param("esd-x", marks=pytest.mark.slow), "saddle", "salun"])
def test_resume_is_bit_identical(tiny_pipe, object_task, tmp_path, method):
    kw = dict(batch_size=2, data_steps=2, progress=False, checkpoint_every=2)
    full = uk.unlearn(tiny_pipe, object_task, method, steps=4, out_dir=tmp_path / "full", **kw)
    # stop after 2 steps (a checkpoint is written at the end of the shorter run) ...
    uk.unlearn(tiny_pipe, object_task, method, steps=2, out_dir=tmp_path / "cut", **kw)
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    # ... then restart with the full step count: same config except steps, so rewrite the stored config
    ckpt["identity"]["config"]["steps"] = 4
    torch.save(ckpt, tmp_path / "cut" / "checkpoint.pt")
    resumed = uk.unlearn(tiny_pipe, object_task, method, steps=4, out_dir=tmp_path / "cut", **kw)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for (n, p), (_, q) in zip(full.pipeline.unet.named_parameters(), resumed.pipeline.unet.named_parameters()):
        assert torch.equal(p, q), n


def test_unknown_method_and_field_list_the_valid_ones(tiny_pipe, object_task):
    with pytest.raises(ValueError, match=r"unknown method 'esdx'.*esd-x.*saddle"):
        uk.unlearn(tiny_pipe, object_task, "esdx")
    with pytest.raises(ValueError, match=r"unknown config field 'learning_rate'.*\blr\b"):
        uk.unlearn(tiny_pipe, object_task, "esd-x", learning_rate=1e-4)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        uk.unlearn(tiny_pipe, object_task, "esd-x", steps=-1)
    with pytest.raises(ValueError, match="steps=0 trains nothing.*'esd-x'"):  # 0 is for closed-form methods
        uk.unlearn(tiny_pipe, object_task, "esd-x", steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        uk.unlearn(tiny_pipe, object_task, "ovw", lr=-1.0)


def test_checkpoint_of_another_run_is_refused(tiny_pipe, object_task, tmp_path):
    uk.unlearn(tiny_pipe, object_task, "esd-x", out_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="belongs to another run"):
        uk.unlearn(tiny_pipe, object_task, "ovw", out_dir=tmp_path, **FAST)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        uk.unlearn(tiny_pipe, object_task, "esd-x", out_dir=tmp_path, **FAST)


def test_saddle_logs_multiplier_and_its_constraint_loss(tiny_pipe, object_task):
    for constraint, key in (("overwrite", "constraint_loss"), ("forget-loss", "forget_loss"), ("esd", "constraint_loss")):
        h = uk.unlearn(tiny_pipe, object_task, "saddle", steps=3, batch_size=2, data_steps=2, progress=False,
                       constraint=constraint).history
        assert all({"mu", "tau", key, "help"} <= set(x) for x in h), constraint
        assert all(x["mu"] >= 0 for x in h) and h[0]["tau"] > 0
    assert uk.methods.make_config("saddle").constraint == "overwrite"  # chosen by bench/tune.py (docs/RESULTS.md)


def test_regression_target_matches_diffusers_for_epsilon_and_v():
    from diffusers import DDPMScheduler

    from unlearnkit.losses import regression_target

    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    for kind in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=kind)
        want = noise if kind == "epsilon" else sched.get_velocity(x0, noise, t)
        got = regression_target(kind, sched.alphas_cumprod, x0, noise, t)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="sample"):
        regression_target("sample", sched.alphas_cumprod, x0, noise, t)


def test_warm_start_is_exact_and_refuses_another_architecture(tmp_path):
    from unlearnkit.basetrain import warm_start
    from unlearnkit.models import build_pipeline

    src = build_pipeline("tiny", seed=3)
    src.save_pretrained(tmp_path / "src")
    dst = build_pipeline("tiny", seed=4)
    warm_start(dst, tmp_path / "src")
    for (n, a), b in zip(src.unet.state_dict().items(), dst.unet.state_dict().values()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="cannot warm-start"):
        warm_start(build_pipeline("base"), tmp_path / "src")


def test_fused_passes_equal_separate_calls(tiny_pipe):
    # the loop runs every UNet input of a step as one batch: each row's output must not depend on the others
    from unlearnkit.backbone import encode_prompts
    from unlearnkit.context import _Fused

    unet = tiny_pipe.unet
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    parts = [(torch.randn(n, unet.config.in_channels, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g),
              encode_prompts(tiny_pipe, [p] * n)) for n, p in ((2, "a red circle"), (3, ""), (1, "a blue star"))]

    def call(x, t, e):
        with torch.no_grad():
            return unet(x, t, e).sample

    fused = _Fused(call)
    ids = [fused.add(*p) for p in parts]
    out = fused.run()
    assert ids == [0, 1, 2] and [len(o) for o in out] == [2, 3, 1]
    for i, p in zip(ids, parts):
        torch.testing.assert_close(out[i], call(*p), atol=1e-5, rtol=1e-4)
    assert _Fused(call).run() == []


def test_run_method_applies_the_tasks_tuned_config_and_table_extras(tiny_pipe, object_task, tmp_path, monkeypatch):
    from unlearnkit import experiments

    monkeypatch.setitem(experiments.TUNED, object_task.name, {"ovw": {"lr": 3e-4}})
    P = experiments.profile("smoke")
    assert experiments.tuned(object_task.name, "ovw-nohelp") == {"lr": 3e-4}  # the ablation keeps OVW's pick
    assert experiments.run_method(tiny_pipe, object_task, "ovw", P, cache_dir=tmp_path, progress=False).config.lr == 3e-4
    run = experiments.run_method(tiny_pipe, object_task, "ovw-nohelp", P, cache_dir=tmp_path, progress=False)
    assert (run.config.lr, run.config.help_weight) == (3e-4, 0.0)
    default = experiments.run_method(tiny_pipe, object_task, "ovw", P, cache_dir=tmp_path, progress=False, use_tuned=False)
    assert default.config.lr == make_config("ovw").lr
    pipes, results = experiments.compare_methods(tiny_pipe, object_task, methods=("esd-x",), prof=P, cache_dir=tmp_path,
                                                 progress=False, extras={"ESD + L_help": ("esd-x", {"help_weight": 1.0})})
    assert list(results) == ["base", "ESD", "ESD + L_help"] and list(pipes) == ["base", "ESD", "ESD + L_help"]
    assert results["ESD + L_help"]["lpips_ret"] >= 0


def test_a_concept_without_a_tuned_task_gets_its_kinds_rule():
    from unlearnkit import experiments

    # a kind's rule is its own (picked over two pairs of the kind), not the built-in task's pick
    assert experiments.tuned("pair-striped-dotted", "salun", "style") == experiments.KIND_RULES["style"]["salun"]
    assert experiments.tuned("pair-striped-dotted", "sa", "style") == {}  # the default won for SA on styles
    assert experiments.tuned("pair-red-yellow", "sa", "colour") == experiments.KIND_RULES["colour"]["sa"]
    # the ablation takes OVW's rule
    assert experiments.tuned("pair-red-yellow", "ovw-nohelp", "colour") == experiments.KIND_RULES["colour"]["ovw"]
    assert experiments.tuned("object", "sa", "colour") == experiments.TUNED["object"]["sa"]  # a task's own pick wins
    assert experiments.profile("cpu").concept_task("red").kind == "colour"


def test_run_until_forgotten_climbs_the_lr_ladder_only_while_the_check_says_not_forgotten(tiny_pipe, object_task,
                                                                                         tmp_path, monkeypatch):
    from unlearnkit import experiments
    from unlearnkit.evaluation import stopping

    P = experiments.profile("smoke")  # 2 steps: each rung checks every 2, for at most 8
    lr = make_config("esd-x", **experiments.tuned(object_task.name, "esd-x", object_task.kind)).lr  # its kind's rule
    monkeypatch.setattr(stopping, "CHECK_BELOW", 1.0)  # forgotten at the first check of the first rung
    run = experiments.run_until_forgotten(tiny_pipe, object_task, "esd-x", P, cache_dir=tmp_path, progress=False)
    assert (run.config.lr, run.config.steps, run.stop["every"], len(run.history)) == (lr, 8, 2, 2)
    monkeypatch.setattr(stopping, "CHECK_BELOW", -1.0)  # never forgotten: every rung, the last one returned
    run = experiments.run_until_forgotten(tiny_pipe, object_task, "esd-x", P, cache_dir=tmp_path, progress=False)
    assert run.config.lr == pytest.approx(lr * experiments.ESCALATION[-1]) and len(run.history) == 8
    assert list(run.forget_checks) == [2, 4, 6, 8]
    rungs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(f"{object_task.name}-esd-x-"))
    # a cached run per rung; the check's bound is part of a run's key, so the first call's run was not taken for one
    assert len(rungs) == 1 + len(experiments.ESCALATION)
    # an ablation climbs with its parent's checks: the same rung as OVW's, whatever its own checks say
    monkeypatch.setattr(stopping, "CHECK_BELOW", 1.0)
    ovw = experiments.run_until_forgotten(tiny_pipe, object_task, "ovw", P, cache_dir=tmp_path, progress=False)
    ablation = experiments.run_until_forgotten(tiny_pipe, object_task, "ovw-nohelp", P, cache_dir=tmp_path,
                                               progress=False, like="ovw")
    assert (ablation.config.lr, ablation.config.help_weight) == (ovw.config.lr, 0.0)


def test_compile_runs_both_passes_through_torch_compile_with_the_same_losses(tiny_pipe, object_task, monkeypatch):
    # the plumbing, fast: torch.compile replaced by a recorder that runs the module as it is
    calls, ran = [], []

    def fake_compile(module, mode=None):
        calls.append((type(module).__name__, mode))
        return lambda *a, **k: (ran.append(mode), module(*a, **k))[1]

    plain = uk.unlearn(tiny_pipe, object_task, "ovw", **FAST)
    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled = uk.unlearn(tiny_pipe, object_task, "ovw", compile="reduce-overhead", **FAST)
    assert [m for _, m in calls] == ["reduce-overhead", "reduce-overhead"]  # the trained UNet and the frozen base
    assert len(ran) >= 2 * FAST["steps"]  # every step's passes went through them
    assert [h["loss"] for h in compiled.history] == [h["loss"] for h in plain.history]
    with pytest.raises(ValueError, match="unknown compile 'fast'"):
        uk.unlearn(tiny_pipe, object_task, "ovw", compile="fast", **FAST)


@pytest.mark.slow
def test_compile_with_inductor_matches_eager(tiny_pipe, object_task):
    # the real torch.compile (inductor on the CPU; minutes): the same losses as eager to float tolerance
    plain = uk.unlearn(tiny_pipe, object_task, "esd-x", **FAST)
    compiled = uk.unlearn(tiny_pipe, object_task, "esd-x", compile="default", **FAST)
    for a, b in zip(plain.history, compiled.history):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"]))


@pytest.mark.slow  # a run with four forget checks, ~13 s: in .ci/run's slow pass, after the suite (the README's command stays under ~8 min)
def test_until_forgotten_stops_at_the_first_check_that_says_forgotten(tiny_pipe, object_task, monkeypatch, tmp_path):
    from unlearnkit.evaluation import stopping

    kw = dict(batch_size=2, data_steps=2, progress=False)
    plain = uk.unlearn(tiny_pipe, object_task, "esd-x", steps=2, **kw)
    monkeypatch.setattr(stopping, "CHECK_BELOW", 1.0)  # every check says forgotten: stop at the first (step 2)
    stopped = uk.unlearn(tiny_pipe, object_task, "esd-x", steps=6, stop=uk.until_forgotten(2), out_dir=tmp_path, **kw)
    assert len(stopped.history) == 2 and list(stopped.forget_checks) == [2] and stopped.stopped_forgotten
    assert 0.0 <= stopped.forget_checks[2] <= 1.0
    # the check samples on its own seeds: the first 2 steps are those of a plain 2-step run
    for (n, p), (_, q) in zip(plain.pipeline.unet.named_parameters(), stopped.pipeline.unet.named_parameters()):
        assert torch.equal(p, q), n
    again = uk.unlearn(tiny_pipe, object_task, "esd-x", steps=6, stop=uk.until_forgotten(2), out_dir=tmp_path, **kw)
    assert len(again.history) == 2  # resumed from a run that stopped: it stays stopped
    monkeypatch.setattr(stopping, "CHECK_BELOW", -1.0)  # no check says forgotten: all steps, a check every 2
    full = uk.unlearn(tiny_pipe, object_task, "esd-x", steps=5, stop=uk.until_forgotten(2), **kw)
    assert len(full.history) == 5 and list(full.forget_checks) == [2, 4, 5]
    assert plain.forget_checks == {}
    assert not full.stopped_forgotten and not plain.stopped_forgotten


def test_until_forgotten_refuses_a_concept_the_classifier_cannot_judge(tiny_pipe, object_task):
    from dataclasses import replace

    task = replace(object_task, name="cats", forget_concept="cat", kind="animal")
    with pytest.raises(ValueError, match="until_forgotten=2.*'cat'.*until_forgotten=0"):
        uk.unlearn(tiny_pipe, task, "esd-x", steps=2, stop=uk.until_forgotten(2), batch_size=2, data_steps=2,
                   progress=False)
    with pytest.raises(ValueError, match="check interval in steps > 0"):
        uk.until_forgotten(0)
    # the config field it used to be: one error that names the stopping rule
    with pytest.raises(ValueError, match=r"stop=unlearnkit.until_forgotten\(N\)"):
        uk.unlearn(tiny_pipe, object_task, "esd-x", steps=2, until_forgotten=2)


@pytest.mark.parametrize("method", ["ga", "esd-x", "salun", "sa", "ovw", "saddle", "ca", "fmn"])
def test_first_step_is_the_loops_first_step_stopped_before_backward(tiny_pipe, object_task, method):
    # what the notebooks write out by hand is checked against this: the loss of the loop's own first step
    from unlearnkit.train import first_step

    kw = dict(FAST, steps=1, help_weight=1.0 if method == "ga" else 0.0)  # GA with L_help: the help draw is set apart
    if method == "sa":
        kw["fisher"] = "one-t"  # the authors' Fisher is 1000 passes an example: the step is the same either way
    logged = uk.unlearn(tiny_pipe, object_task, method, **kw).history[0]["loss"]
    before = _state(tiny_pipe.unet)
    s = first_step(tiny_pipe, object_task, method, config=make_config(method, **{k: v for k, v in kw.items()
                                                                                 if k != "progress"}))
    assert float(s.loss) == pytest.approx(logged, rel=1e-5)
    assert s.forget.x_t.shape[0] == kw["batch_size"] and s.passes["train"], "the forget batch and the queued passes"
    assert (s.help_draw is not None) == (kw["help_weight"] > 0)
    if method in ("salun", "sa"):
        assert s.draws and s.draws[0].idx.max() < len(s.ctx.x_r), "the retain batch the method drew itself"
    assert all(torch.equal(before[n], p) for n, p in tiny_pipe.unet.named_parameters()), "first_step trains nothing"
    with pytest.raises(ValueError, match="unknown"):
        first_step(tiny_pipe, object_task, method, config=s.method.config, no_such_field=1)


def test_first_step_by_hand_for_ga(tiny_pipe, object_task):
    # the notebooks' check in miniature: GA's loss written out equals the step's
    from unlearnkit.app.notebook import same_loss
    from unlearnkit.train import first_step

    s = first_step(tiny_pipe, object_task, "ga", config=make_config("ga", **{k: v for k, v in FAST.items() if k != "progress"}))
    ctx, f = s.ctx, s.forget
    by_hand = -((ctx.model(f.x_t, f.t, ctx.e_f[f.idx]) - f.target) ** 2).mean()
    assert "equal" in same_loss(s, by_hand)
    with pytest.raises(AssertionError, match="differ"):
        same_loss(s, by_hand * 1.01)


def test_until_forgotten_can_check_on_images_with_their_own_noise(tiny_pipe, object_task, monkeypatch):
    from unlearnkit.evaluation import stopping

    shared, own = uk.until_forgotten(2), uk.until_forgotten(2, noise="per-image")
    assert "noise" not in shared.key() and own.key()["noise"] == "per-image"  # runs from before keep their keys
    with pytest.raises(ValueError, match="noise must be one of shared, per-image"):
        uk.until_forgotten(2, noise="own")
    asked = []
    real = stopping.sample_pairs

    def spy(pipe, prompts, seeds, **kw):
        asked.append(list(seeds))
        return real(pipe, prompts, seeds, **kw)

    monkeypatch.setattr(stopping, "sample_pairs", spy)
    cfg = make_config("esd-x", data_steps=2)
    for rule in (shared, own):
        log, _ = rule(tiny_pipe, object_task, cfg)
        assert 0.0 <= log["forget_check"] <= 1.0
    n = len(object_task.forget_prompts)
    assert asked[0] == [1000, 1001] * n and len(set(asked[1])) == 2 * n and min(asked[1]) >= 2**32
