"""The figure helpers: what each draws, that they save headless, and that the library never picks a backend."""

import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
import torch

from unlearnkit.pictures import figures
from unlearnkit import world
from unlearnkit.evaluation import LPIPSDistance


@pytest.fixture(scope="module")
def lpips():
    return LPIPSDistance()


@pytest.fixture
def columns():
    prompts = [world.prompt("triangle", "red", "striped"), world.prompt("square", "red", "striped")]
    base = world.render_batch(prompts, [0, 0])
    return {"base": base, "other seed": world.render_batch(prompts, [1, 1]), "same": base.clone()}


def test_importing_figures_leaves_the_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import unlearnkit.pictures.figures, matplotlib.pyplot; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_comparison_grid_has_a_heatmap_row_under_each_image_row(columns, lpips, tmp_path):
    fig = figures.comparison_grid(columns, ["a", "b"], lpips, title="t", path=tmp_path / "g.png")
    images = [ax for ax in fig.axes if ax.images]
    # 2 rows x 3 columns of images, 2 rows x 2 non-base columns of maps; 2 empty slots and a colour bar
    assert len(images) == 6 + 4 and len(fig.axes) == 6 + 6 + 1
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    d = lpips(columns["base"], columns["other seed"]).tolist()
    assert labels.count("0.000") == 2 and f"{d[0]:.3f}" in labels and f"{d[1]:.3f}" in labels
    maps = [ax.images[0].get_array() for ax in fig.axes if ax.images and ax.images[0].get_array().ndim == 2]
    assert sum(float(abs(m).max()) == 0 for m in maps) == 2  # the identical column's maps are all zero
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert not plt.get_fignums()  # saved and dropped from pyplot under Agg: nothing piles up
    plain = figures.comparison_grid(columns, ["a", "b"], lpips, heatmaps=False)
    assert len([ax for ax in plain.axes if ax.images]) == 6


def test_comparison_grid_names_its_bad_inputs(columns):
    with pytest.raises(ValueError, match="base model under 'base'"):
        figures.comparison_grid({"x": columns["same"]}, ["a", "b"])
    with pytest.raises(ValueError, match="column 'same' has 2 images for 3 rows"):
        figures.comparison_grid({"base": torch.zeros(3, 3, 8, 8), "same": columns["same"]}, ["a", "b", "c"])


def _result(values, concepts):
    t = torch.tensor(values)
    return {"lpips_ret": float(t.mean()), "lpips_ret_ci": (float(t.min()), float(t.max())), "retain_accuracy": 0.5,
            "retain_accuracy_ci": (0.25, 0.75), "fid": 10.0, "fid_ci": (5.0, 15.0), "lpips_net": "x",
            "retain_pairs": [{"prompt": "p", "seed": 0, "concept": c, "lpips": v} for v, c in zip(values, concepts)]}


def test_metric_curves_draw_error_bars_and_values():
    results = {0.0: _result([0.0, 0.0], "ab"), 0.1: _result([0.1, 0.3], "ab")}
    fig = figures.metric_curves(results)
    assert len(fig.axes) == 3
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0", "0.2"]
    # errorbar: the line, and the bar segments from lo to hi
    segments = fig.axes[0].collections[0].get_segments()
    assert [tuple(s[:, 1]) for s in segments] == [(0.0, 0.0), pytest.approx((0.1, 0.3))]


def test_retain_spread_puts_the_first_concept_first():
    fig = figures.retain_spread({"m": _result([0.1, 0.2, 0.3], ["square", "circle", "square"])})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["square", "circle"]
    assert [round(p.get_height(), 6) for p in fig.axes[0].patches] == [0.2, 0.2]


def test_ladder_and_loss_curves():
    image = torch.zeros(3, 8, 8)
    ladder = {n: {"image": image, "prompt": "p", "seed": 0, "lpips": v} for n, v in (("itself", 0.0), ("x", 0.25))}
    fig = figures.ladder_figure(ladder)
    assert [t.get_text() for t in fig.axes[-1].texts] == ["0.000", "0.250"]
    fig = figures.loss_curves([{"step": 0, "loss": 1.0, "mu": 0.0}, {"step": 1, "loss": 0.5, "mu": 0.1}])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mu"]
    assert list(fig.axes[0].lines[0].get_ydata()) == [1.0, 0.5]


def test_figure_path_keeps_each_profiles_figures_apart(tmp_path, monkeypatch):
    from unlearnkit.pictures.layout import figure_path
    from unlearnkit.experiments import profile

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    assert figure_path("cpu", tmp_path, "table1.md") == tmp_path / "table1.md"
    assert figure_path("full", tmp_path, "table1.md") == tmp_path / "table1_full.md"
    assert figure_path("gpu", tmp_path, "fig1_style.png") == tmp_path / "fig1_style_gpu.png"
    assert figure_path("smoke", tmp_path, "table1.md").parent != tmp_path  # tests never touch figures/
    full = profile("full")
    assert full.method_overrides.get("steps", 100) == 100 and len(full.eval_seeds) >= 2 and full.max_retain is None


def test_notebook_sentences_are_written_from_the_numbers():
    from types import SimpleNamespace

    from unlearnkit.app.notebook import neighbour_verdict, trained_config
    from unlearnkit.methods import make_config

    results = {"base": {}, "A": {"forget_rate": 0.0, "lpips_neighbour": 0.3, "lpips_neighbour_ci": (0.25, 0.35),
                                 "lpips_rest": 0.1, "lpips_rest_ci": (0.08, 0.12)},
               "B": {"forget_rate": 0.1, "lpips_neighbour": 0.1, "lpips_neighbour_ci": (0.05, 0.15),
                     "lpips_rest": 0.1, "lpips_rest_ci": (0.08, 0.12)},
               "C": {"forget_rate": 0.9, "lpips_neighbour": 0.3, "lpips_neighbour_ci": (0.25, 0.35),
                     "lpips_rest": 0.1, "lpips_rest_ci": (0.08, 0.12)}}
    text = neighbour_verdict(results)
    assert text.startswith("Claim (a), neighbour above the rest with disjoint intervals, holds for 1 of 2")
    assert "A (0.300 vs 0.100)" in text and "does not for B" in text and "did not forget): C" in text
    run = SimpleNamespace(method="esd-x", config=make_config("esd-x", lr=1e-3, steps=50))  # default lr 3e-4
    assert trained_config(run) == "esd-x trained with steps=50, lr=0.001 (every other field at the method's default)"
    assert trained_config(SimpleNamespace(method="esd-x", config=make_config("esd-x"))) == "esd-x trained with its defaults"


def test_what_was_drawn_says_how_often_the_neighbour_is_still_drawn(monkeypatch):
    from types import SimpleNamespace

    import unlearnkit.data
    import unlearnkit.evaluation.classifier
    from unlearnkit import world
    from unlearnkit.app.notebook import what_was_drawn

    task = world.task(forget="triangle", neighbour="square").head(2, 8)

    def images(pipe, prompts, seeds, *args, **kw):  # stand-in samples: (the model, its prompt)
        return list(zip([pipe] * len(prompts), prompts))

    def predict(imgs):  # base draws what it is told; "A" draws circles everywhere; "B" only in place of triangle
        return [{"object": "circle" if m == "A" or (m == "B" and "triangle" in p) else
                 ("square" if "square" in p else "triangle")} for m, p in imgs]

    monkeypatch.setattr(unlearnkit.data, "cached_sample_pairs", images)
    monkeypatch.setattr(unlearnkit.evaluation.classifier, "load_classifier", lambda: SimpleNamespace(predict=predict))
    near = {"lpips_neighbour": 0.1, "lpips_neighbour_ci": (0.05, 0.15), "lpips_rest": 0.1, "lpips_rest_ci": (0.08, 0.12)}
    results = {"base": {"forget_rate": 1.0}, "A": {"forget_rate": 0.0, **near}, "B": {"forget_rate": 0.0, **near}}
    prof = SimpleNamespace(forget_seeds=(0, 1), forget_noise="shared", eval_seeds=(0,), sample_steps=2, guidance_scale=2.0)
    text = what_was_drawn({"base": "base", "A": "A", "B": "B"}, results, task, prof)
    assert "| base | triangle 100% | 100% |" in text and "| A | circle 100% | 0% |" in text
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "its *square* prompts show square in 0% of images (base 100%)" in lines["A"]
    assert "loses more than half of its images" in lines["A"] and "loses" not in lines["B"]
    assert "square in 100% of images (base 100%); neighbour and rest pay alike" in lines["B"]


def test_sequence_figure_draws_intervals_that_miss_their_point():
    # notebook 12 died in sequence_figure on "'yerr' must not contain negative values": an interval a rounding error
    # (Wilson's at 6 of 6) or more (a percentile bootstrap) off its point; the error bar is clipped, not refused
    from unlearnkit.pictures.figures import sequence_figure

    rows = [{"stage": 1, "concept": "triangle", "lpips_ret": 0.02, "lpips_ret_ci": (0.021, 0.03),
             "forget_rates": {"triangle": 1.0}, "forget_rates_ci": {"triangle": (0.6, 0.9999999999999999)}},
            {"stage": 2, "concept": "red", "lpips_ret": 0.05, "lpips_ret_ci": (0.04, 0.049),
             "forget_rates": {"triangle": 0.0, "red": 0.3}, "forget_rates_ci": {"triangle": (2.8e-17, 0.1),
                                                                                  "red": None}}]
    fig = sequence_figure({"Saddle": rows})
    assert [a.get_title() for a in fig.axes] == ["LPIPS_ret vs the original base", "forget rate of 'triangle'",
                                                 "forget rate of 'red'"]
    ys = [list(line.get_ydata()) for line in fig.axes[1].get_lines() if len(line.get_ydata()) == 2]
    assert [1.0, 0.0] in ys  # the forget-rate line is drawn through its points
