
import pytest
import torch

import unlearnkit as uk
from unlearnkit import world
from unlearnkit.data import cached_sample_pairs, pipeline_fingerprint
from unlearnkit.evaluation import LPIPSDistance, bootstrap_ci, classifier_fid, fid_ci, frechet_distance, results_table

FAST = dict(seeds=[0], steps=2, fid=False)


@pytest.fixture(scope="module")
def lpips():
    return LPIPSDistance()


def test_lpips_is_zero_on_identical_images_and_grows_with_change(lpips):
    a = world.render_batch([world.prompt("circle", "red", "plain")] * 2, [0, 1])
    assert lpips(a, a).abs().max().item() < 1e-6
    small = lpips(a, (a + 0.02 * torch.randn_like(a)).clamp(0, 1)).mean()
    big = lpips(a, world.render_batch([world.prompt("star", "blue", "dotted")] * 2, [0, 1])).mean()
    assert 0 < small < big
    assert lpips.name.startswith("stlpips") and "64px" in lpips.name


def test_lpips_map_is_zero_on_identical_images_and_averages_to_the_distance(lpips):
    prompts = [world.prompt(o, c, "striped") for o in ("circle", "star") for c in ("red", "blue")]
    a = world.render_batch(prompts, [0] * 4)
    assert lpips.map(a, a).shape == (4, 1, 32, 32) and lpips.map(a, a).abs().max().item() == 0
    for b in (world.render_batch(prompts, [1] * 4), world.render_batch(prompts[::-1], [0] * 4)):
        m, d = lpips.map(a, b), lpips(a, b)
        # stlpips upsamples each layer's map before summing: the mean agrees with the distance to ~1e-4 (measured)
        assert m.min() >= 0 and torch.allclose(m.mean((1, 2, 3)), d, rtol=1e-3)
    # the map says where: a change in the left half lights up the left half
    b = a.clone()
    b[..., :, :12] = world.render_batch([world.prompt("cross", "green", "dotted")] * 4, [5] * 4)[..., :, :12]
    m = lpips.map(a, b)
    assert (m[..., :, :16].mean((1, 2, 3)) > 3 * m[..., :, 16:].mean((1, 2, 3))).all()
    assert lpips(a, a).abs().max() < 1e-6  # the spatial switch is off again


def test_lpips_rejects_bad_inputs():
    with pytest.raises(ValueError, match="unknown lpips_net 'vgg'"):
        LPIPSDistance("vgg")
    with pytest.raises(ValueError, match="lpips_size"):
        LPIPSDistance(size=16)


def test_identical_models_give_exactly_zero(tiny_pipe, object_task, lpips):
    r = uk.evaluate(tiny_pipe, tiny_pipe, object_task, lpips=lpips, **FAST)
    assert r["lpips_ret"] == 0.0 and r["integrity"] == 1.0 and r["lpips_forget"] == 0.0
    assert r["lpips_ret_ci"] == (0.0, 0.0)
    assert r["lpips_net"] == lpips.name
    assert list(r["per_concept"])[0] == object_task.neighbour_concept


def test_a_copy_of_the_model_also_gives_zero(tiny_pipe, object_task, lpips):
    # another object with the same weights: same fingerprint, same cached images, exactly zero
    from unlearnkit.models import build_pipeline

    twin = build_pipeline("tiny", seed=0)
    r = uk.evaluate(tiny_pipe, twin, object_task, lpips=lpips, **FAST)
    assert r["lpips_ret"] == 0.0 and r["integrity"] == 1.0


def test_a_changed_model_gives_positive_lpips(tiny_pipe, object_task, lpips):
    from unlearnkit.models import build_pipeline

    other = build_pipeline("tiny", seed=1)
    r = uk.evaluate(tiny_pipe, other, object_task, lpips=lpips, **FAST)
    assert r["lpips_ret"] > 0.01 and r["integrity"] == pytest.approx(1 - r["lpips_ret"])
    lo, hi = r["lpips_ret_ci"]
    assert lo <= r["lpips_ret"] <= hi


def test_evaluate_lists_every_retain_pair_and_intervals(tiny_pipe, object_task, lpips):
    from unlearnkit.models import build_pipeline

    r = uk.evaluate(tiny_pipe, build_pipeline("tiny", seed=1), object_task, lpips=lpips, seeds=[0, 1], steps=2)
    pairs = r["retain_pairs"]
    # prompt-major, seeds inner, neighbour concept first: the order of evaluation
    assert len(pairs) == r["n_retain"] == 8
    held_out = object_task.retain_eval  # the default: the retain prompts no method trained on
    assert r["on"] == "eval" and set(p["prompt"] for p in pairs) <= set(object_task.held_out)
    assert [(p["prompt"], p["seed"]) for p in pairs[:3]] == [(held_out[0], 0), (held_out[0], 1), (held_out[1], 0)]
    assert pairs[0]["concept"] == object_task.neighbour_concept == list(r["per_concept"])[0]
    assert sum(p["lpips"] for p in pairs) / len(pairs) == pytest.approx(r["lpips_ret"], rel=1e-6)
    for c, mean in r["per_concept"].items():
        mine = [p["lpips"] for p in pairs if p["concept"] == c]
        assert sum(mine) / len(mine) == pytest.approx(mean, rel=1e-9)
    for key in ("forget_rate", "retain_accuracy", "fid"):
        lo, hi = r[key + "_ci"]
        assert lo <= r[key] <= hi, key
    assert r["fid_ci"][1] > r["fid_ci"][0]


def test_frechet_distance_matches_torchmetrics_fid_and_its_interval():
    from unlearnkit.evaluation.classifier import load_classifier
    from unlearnkit.evaluation.fid import _Features

    clf = load_classifier()
    for n in (6, 130):  # both branches: fewer and more images than the 128 feature dimensions
        prompts = (world.all_prompts() * 2)[:n]
        real, fake = world.render_batch(prompts, [0] * n), world.render_batch(prompts, [1] * n)
        with torch.no_grad():
            d = frechet_distance(_Features(clf)(real), _Features(clf)(fake))
        assert float(d) == pytest.approx(classifier_fid(clf, real, fake), rel=1e-4)
    lo, hi = fid_ci(clf, real[:20], fake[:20])
    assert lo < classifier_fid(clf, real[:20], fake[:20]) < hi
    assert fid_ci(clf, real[:20], real[:20]) == pytest.approx((0.0, 0.0), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(1, 4))


def test_no_seeds_is_a_value_error(tiny_pipe, object_task):
    with pytest.raises(ValueError, match="seeds is empty"):
        uk.evaluate(tiny_pipe, tiny_pipe, object_task, seeds=[])


def test_base_image_cache_key_and_invalidation(tiny_pipe, tmp_path):
    prompts, seeds = [world.prompt("circle", "red", "plain")], [0]
    a = cached_sample_pairs(tiny_pipe, prompts, seeds, 2, 2.0, tmp_path)
    files = lambda: sorted((tmp_path / "samples").iterdir())  # noqa: E731
    assert len(files()) == 1
    b = cached_sample_pairs(tiny_pipe, prompts, seeds, 2, 2.0, tmp_path)
    assert torch.equal(a, b) and len(files()) == 1  # reused
    # every part of the key makes a new entry: steps, guidance, seeds, prompts, weights
    cached_sample_pairs(tiny_pipe, prompts, seeds, 3, 2.0, tmp_path)
    cached_sample_pairs(tiny_pipe, prompts, seeds, 2, 3.0, tmp_path)
    cached_sample_pairs(tiny_pipe, prompts, [1], 2, 2.0, tmp_path)
    cached_sample_pairs(tiny_pipe, [world.prompt("star", "red", "plain")], seeds, 2, 2.0, tmp_path)
    assert len(files()) == 5
    fp = pipeline_fingerprint(tiny_pipe)
    with torch.no_grad():
        next(tiny_pipe.unet.parameters()).add_(1e-3)
    assert pipeline_fingerprint(tiny_pipe) != fp
    c = cached_sample_pairs(tiny_pipe, prompts, seeds, 2, 2.0, tmp_path)
    assert len(files()) == 6 and not torch.equal(a, c)


def test_second_evaluation_reuses_the_base_images(tiny_pipe, object_task, lpips, tmp_path, monkeypatch):
    # counted, not timed: a second model's evaluation samples only that model, never the base again
    from unlearnkit import data
    from unlearnkit.models import build_pipeline

    sampled, real = [], data.sample_pairs
    monkeypatch.setattr(data, "sample_pairs", lambda pipe, *a, **k: sampled.append(pipe) or real(pipe, *a, **k))
    kw = dict(seeds=[0, 1], steps=4, fid=False, lpips=lpips, cache_dir=tmp_path)
    first_model, second_model = build_pipeline("tiny", seed=1), build_pipeline("tiny", seed=2)
    first = uk.evaluate(tiny_pipe, first_model, object_task, **kw)
    assert any(p is tiny_pipe for p in sampled) and any(p is first_model for p in sampled)
    sampled.clear()
    second = uk.evaluate(tiny_pipe, second_model, object_task, **kw)
    assert sampled and all(p is second_model for p in sampled)
    assert second["lpips_ret"] != first["lpips_ret"]


def test_bootstrap_interval_brackets_the_mean():
    v = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    lo, hi = bootstrap_ci(v)
    assert lo < v.mean().item() < hi and lo >= 0.1 and hi <= 0.5


def test_results_table_writes_markdown_and_csv(tmp_path):
    r = {"lpips_ret": 0.1, "integrity": 0.9, "lpips_ret_ci": (0.05, 0.15), "forget_rate": 0.1, "lpips_net": "x"}
    md = results_table({"OVW": r, "ESD": {**r, "lpips_ret": 0.3}}, path=tmp_path / "t")
    assert "| OVW |" in md and "0.100 [0.050, 0.150]" in md and "LPIPS network: x" in md
    csv = (tmp_path / "t.csv").read_text().splitlines()
    assert csv[0].startswith("method,") and csv[2].startswith("ESD,") and len(csv) == 3


def test_neighbour_and_rest_columns_and_the_did_not_forget_flag():
    import warnings

    import unlearnkit as uk
    from unlearnkit.models import build_pipeline

    class SeesTriangles:  # a stand-in judge: every image shows a red triangle
        def predict(self, images):
            return [{"object": "triangle", "colour": "red", "style": "plain"} for _ in images]

    base, other = build_pipeline("tiny", seed=0), build_pipeline("tiny", seed=1)
    task = uk.get_task("object").head(2, 30)  # held out: 8 neighbour (square) prompts first, then 22 others
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = uk.evaluate(base, other, task, seeds=[0], steps=2, fid=False, classifier=SeesTriangles())
    pairs = torch.tensor([p["lpips"] for p in r["retain_pairs"]])
    near = torch.tensor([p["concept"] == "square" for p in r["retain_pairs"]])
    assert int(near.sum()) == 8 and bool(near[:8].all())
    assert r["lpips_neighbour"] == pytest.approx(float(pairs[near].mean()))
    assert r["lpips_rest"] == pytest.approx(float(pairs[~near].mean()))
    assert r["lpips_neighbour_ci"][0] <= r["lpips_neighbour"] <= r["lpips_neighbour_ci"][1]
    assert r["forget_rate"] == 1.0 and r["forgot"] is False
    assert any("did not forget: forget rate 1.00" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as named:  # a warning names what it judged: the method, the task
        warnings.simplefilter("always")
        uk.evaluate(base, other, task, seeds=[0], steps=2, fid=False, classifier=SeesTriangles(), name="esd-x")
    from unlearnkit.evaluation import DidNotForget

    assert [str(w.message)[:35] for w in named if w.category is DidNotForget] == ["esd-x on object did not forget: for"]
    with warnings.catch_warnings(record=True) as both:  # on="both" reads the same forget images twice: one warning
        warnings.simplefilter("always")
        uk.evaluate(base, other, task, seeds=[0], steps=2, fid=False, classifier=SeesTriangles(), name="esd-x",
                    on="both")
    assert [str(w.message)[:35] for w in both if w.category is DidNotForget] == ["esd-x on object did not forget: for"]
    table = uk.results_table({"x": r})
    assert "LPIPS_ret neighbour" in table and f"{r['lpips_rest']:.3f} [" in table


def test_evaluate_reads_the_held_out_part_the_training_part_or_both(tiny_pipe, object_task, lpips):
    from unlearnkit.models import build_pipeline

    other = build_pipeline("tiny", seed=1)
    kw = dict(lpips=lpips, seeds=[0], steps=2, fid=False)
    held, trained = (uk.evaluate(tiny_pipe, other, object_task, on=on, **kw) for on in ("eval", "train"))
    assert {p["prompt"] for p in held["retain_pairs"]} == set(object_task.retain_eval)
    assert {p["prompt"] for p in trained["retain_pairs"]} == set(object_task.retain_train)
    assert not set(object_task.retain_eval) & set(object_task.retain_train)
    both = uk.evaluate(tiny_pipe, other, object_task, on="both", **kw)
    assert both["lpips_ret"] == pytest.approx(held["lpips_ret"], rel=1e-6)
    assert both["train"]["lpips_ret"] == pytest.approx(trained["lpips_ret"], rel=1e-6)
    assert both["train"]["n_retain"] == trained["n_retain"]
    table = uk.results_table({"other": both})
    assert "LPIPS_ret train prompts" in table and "held-out retain prompts" in table
    with pytest.raises(ValueError, match="on='test'"):
        uk.evaluate(tiny_pipe, other, object_task, on="test", **kw)


def test_forget_seeds_size_the_forget_rate_and_rates_get_wilson_intervals(tiny_pipe, object_task, lpips):
    from unlearnkit.evaluation import rate_ci

    r = uk.evaluate(tiny_pipe, tiny_pipe, object_task, lpips=lpips, seeds=[0], forget_seeds=[5, 6, 7], steps=2,
                    fid=False)
    assert r["n_forget"] == 3 * len(object_task.forget_prompts) and r["forget_seeds"] == [5, 6, 7]
    assert r["n_retain"] == len(object_task.retain_eval)
    # Wilson: a rate of 0 or 1 still has an interval of nonzero width; 0 of 30 gives [0, 0.114]
    rate, (lo, hi) = rate_ci([False] * 30)
    assert rate == 0 and lo == 0 and hi == pytest.approx(0.1135, abs=1e-3)
    rate, (lo, hi) = rate_ci([True] * 3 + [False] * 7)
    assert lo < rate < hi and (lo, hi) == pytest.approx((0.1078, 0.6032), abs=1e-3)


def test_seed_bootstrap_resamples_seeds_not_images():
    from unlearnkit.evaluation import rate_ci, seed_bootstrap_ci

    # two seeds, 30 prompts each: one seed forgets every image, the other none. Wilson over the 60 images is narrow;
    # resampling the two seeds spans both extremes, since a seed's images share their initial noise
    split = [[False] * 30, [True] * 30]
    _, (wlo, whi) = rate_ci(split[0] + split[1])
    lo, hi = seed_bootstrap_ci(split)
    assert whi - wlo < 0.26 and (lo, hi) == (0.0, 1.0)
    # seeds that agree: the interval over seeds is no wider than needed (here every seed 3 of 10: a point)
    assert seed_bootstrap_ci([[True] * 3 + [False] * 7] * 4) == pytest.approx((0.3, 0.3))
    lo, hi = seed_bootstrap_ci([[True] * k + [False] * (30 - k) for k in (0, 2, 9, 8, 8, 10)])
    assert 0 < lo < 37 / 180 < hi < 0.34
    with pytest.raises(ValueError, match="at least one seed"):
        seed_bootstrap_ci([[True], []])



def test_forget_images_get_their_own_noise_when_asked(tiny_pipe, object_task, lpips):
    from unlearnkit.data import cached_sample_pairs
    from unlearnkit.sampling import image_seed, noise_seeds

    prompts = object_task.forget_prompts
    # per image: the same (prompt, seed) always the same seed; two prompts at one seed, or one prompt at two, differ;
    # never one of the small seeds the kit passes (training data, checks, evaluation)
    assert image_seed(prompts[0], 3) == image_seed(prompts[0], 3)
    seeds = noise_seeds([prompts[0], prompts[1], prompts[0]], [3, 3, 4], "per-image")
    assert len(set(seeds)) == 3 and min(seeds) >= 2**32
    assert noise_seeds(prompts[:2], [3, 3]) == [3, 3]  # shared: the seed itself
    with pytest.raises(ValueError, match="noise='each'"):
        noise_seeds(prompts[:1], [0], "each")
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        noise_seeds(prompts[:2], [0])

    kw = dict(lpips=lpips, seeds=[0], forget_seeds=[5, 6], steps=2, fid=False)
    shared = uk.evaluate(tiny_pipe, tiny_pipe, object_task, **kw)
    own = uk.evaluate(tiny_pipe, tiny_pipe, object_task, forget_noise="per-image", **kw)
    assert shared["forget_noise"] == "shared" and own["forget_noise"] == "per-image"
    assert own["n_forget"] == shared["n_forget"] == 2 * len(prompts) and own["forget_seeds"] == [5, 6]
    # the images it judged are those of the per-image seeds (read back from the sample cache), not the shared ones
    f_prompts = [p for p in prompts for _ in (5, 6)]
    a = cached_sample_pairs(tiny_pipe, f_prompts, [5, 6] * len(prompts), 2, 2.0)
    b = cached_sample_pairs(tiny_pipe, f_prompts, noise_seeds(f_prompts, [5, 6] * len(prompts), "per-image"), 2, 2.0)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="forget_noise='one'"):
        uk.evaluate(tiny_pipe, tiny_pipe, object_task, forget_noise="one", **kw)


def test_a_profile_says_its_forget_noise_only_where_it_is_not_shared():
    from dataclasses import replace

    from unlearnkit.experiments import profile

    P = profile("cpu")
    assert "forget_noise" not in P.evaluation  # the tuning rows' settings of every earlier sweep stay comparable
    assert replace(P, forget_noise="per-image").evaluation["forget_noise"] == "per-image"


def test_wilson_intervals_hold_their_point_exactly():
    from unlearnkit.evaluation.stats import wilson_ci

    # in floats, 0 of 11 gave a lower end of 2.8e-17 and 6 of 6 an upper end of 0.9999999999999999
    for n in range(1, 120):
        for k in (0, 1, n // 2, n - 1, n):
            lo, hi = wilson_ci(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
        assert wilson_ci(0, n)[0] == 0.0 and wilson_ci(n, n)[1] == 1.0
