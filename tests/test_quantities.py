"""What the method notebooks show: weight change per block, SalUn's mask share, SA's Fisher mass, ESD's panel."""

import copy

import torch

import unlearnkit as uk
from unlearnkit.pictures import quantities as q


def test_weight_change_mask_share_and_fisher_mass(tiny_pipe):
    moved = copy.deepcopy(tiny_pipe.unet)
    with torch.no_grad():
        moved.conv_in.weight.mul_(1.5)  # conv_in alone: ‖θ − θ0‖/‖θ0‖ of its block is 0.5·‖w‖/‖(w, b)‖
    change = q.weight_change(tiny_pipe.unet, moved)
    w, b = tiny_pipe.unet.conv_in.weight, tiny_pipe.unet.conv_in.bias
    expected = 0.5 * float(w.norm()) / float(torch.cat([w.flatten(), b]).norm())
    assert abs(change["conv_in"] - expected) < 1e-6 and all(v == 0 for k, v in change.items() if k != "conv_in")
    mask = {"down_blocks.0.a": torch.tensor([True, False]), "down_blocks.0.b": torch.tensor([True, True]),
            "mid_block.c": torch.tensor([False, False, False, True])}
    assert q.mask_share(mask) == {"down_blocks.0": 0.75, "mid_block": 0.25}
    mass = q.fisher_mass([torch.ones(2), torch.ones(2), torch.full((4,), 2.0)], list(mask))
    assert mass == {"down_blocks.0": 1 / 3, "mid_block": 2 / 3}


def test_esd_panel_rows_are_clean_image_estimates(tiny_pipe):
    rows, cols = q.esd_panel(tiny_pipe, tiny_pipe, "a red triangle, plain style", timesteps=(100, 900), steps=2)
    assert cols == ["t=100", "t=900"]
    assert list(rows)[:3] == ["x_t", "base, c_f", "base, ∅"] and "ESD target η=1" in rows
    assert all(v.shape == (2, 3, 32, 32) and 0 <= float(v.min()) and float(v.max()) <= 1 for v in rows.values())
    # η = 0 and the unlearned model = the base: the target is the unconditional prediction, the model the conditional
    rows0, _ = q.esd_panel(tiny_pipe, tiny_pipe, "a red triangle, plain style", timesteps=(100, 900), etas=(0.0,), steps=2)
    assert torch.allclose(rows0["ESD target η=0"], rows0["base, ∅"]) and torch.equal(rows0["unlearned, c_f"],
                                                                                      rows0["base, c_f"])


def test_ovw_panel_target_is_the_base_on_the_anchor(tiny_pipe):
    rows, cols = q.ovw_panel(tiny_pipe, tiny_pipe, "a red triangle, plain style", "a red blob, plain style",
                             timesteps=(300,), steps=2)
    assert cols == ["t=300"] and len(rows) == 4
    base_f, target, model = list(rows.values())[1:]
    # the unlearned model = the base: it predicts the forget prompt's image, not the anchor's
    assert torch.equal(model, base_f) and not torch.equal(model, target)


def test_snapshots_are_kept_cached_and_sampled(tiny_pipe, object_task, tmp_path):
    from unlearnkit.experiments import profile, run_method

    P = profile("smoke")
    run = run_method(tiny_pipe, object_task, "esd-x", P, cache_dir=tmp_path, progress=False, steps=4,
                     snapshots=(0.25, 0.5))
    assert sorted(run.snapshots) == [1, 2]
    assert all(all("attn2" in n for n in w) for w in run.snapshots.values())  # ESD-x: only what trains is kept
    assert not torch.equal(run.snapshots[1][next(iter(run.snapshots[1]))], run.snapshots[2][next(iter(run.snapshots[2]))])
    again = run_method(tiny_pipe, object_task, "esd-x", P, cache_dir=tmp_path, progress=False, steps=4,
                       snapshots=(0.25, 0.5))
    assert all(torch.equal(run.snapshots[k][n], again.snapshots[k][n]) for k in run.snapshots for n in run.snapshots[k])
    rows, cols = q.snapshot_images(tiny_pipe, again, ["a red triangle, plain style"], steps=2, cache_dir=tmp_path)
    assert cols == ["0% (step 0)", "25% (step 1)", "50% (step 2)", "100% (step 4)"]
    images = rows["a red triangle, plain style"]
    assert images.shape == (4, 3, 32, 32)
    # step 0 is the base's image, the last column the unlearned pipeline's
    assert torch.equal(images[0], uk.sample(tiny_pipe, ["a red triangle, plain style"], steps=2)[0])
    assert torch.equal(images[3], uk.sample(again.pipeline, ["a red triangle, plain style"], steps=2)[0])
    # LoRA runs keep adapters, not weights: refused with the fix
    import pytest

    with pytest.raises(ValueError, match="snapshots"):
        run_method(tiny_pipe, object_task, "esd-x", P, cache_dir=tmp_path, params="lora", snapshots=(0.5,))


def test_explore_draws_a_figure_headless_and_widgets_live(tiny_pipe, object_task):
    import ipywidgets
    import matplotlib.figure

    from unlearnkit.pictures.explorer import esd_sliders
    from unlearnkit.evaluation import LPIPSDistance

    lpips = LPIPSDistance()
    fig = uk.explore(tiny_pipe, {"same": tiny_pipe}, object_task, lpips, steps=2, interactive=False)
    assert isinstance(fig, matplotlib.figure.Figure) and "LPIPS 0.000" in fig.axes[2].get_title()
    box = uk.explore(tiny_pipe, {"same": tiny_pipe}, object_task, lpips, steps=2, interactive=True)
    picks = box.children  # the controls; the view itself went out as an ordinary figure output (display_id)
    assert [p.description for p in picks] == ["method", "prompt", "seed"]
    assert list(picks[1].options)[:len(object_task.forget_prompts)] == list(object_task.forget_prompts)
    picks[2].value = 1  # another seed redraws without error
    assert isinstance(esd_sliders(tiny_pipe, "a red triangle, plain style", steps=2, interactive=False),
                      matplotlib.figure.Figure)
    sliders = esd_sliders(tiny_pipe, "a red triangle, plain style", steps=2, interactive=True)
    assert isinstance(sliders, ipywidgets.HBox) and [c.description for c in sliders.children] == ["η", "t"]
    sliders.children[1].value = 250  # redraws the shown figure in place
    import pytest

    with pytest.raises(ValueError, match="runs is empty"):
        uk.explore(tiny_pipe, {}, object_task, lpips)


def test_uce_kv_change_shows_the_erased_token_pulled_to_its_guide(tiny_pipe, object_task):
    run = uk.unlearn(tiny_pipe, object_task, "uce", progress=False)
    kv = q.uce_kv_change(tiny_pipe, run, object_task)
    before, after, kept = kv.values()
    assert len(before) == 14 and set(before) == set(after) == set(kept)  # 7 cross-attentions × (to_k, to_v)
    assert all(after[k] < before[k] / 2 for k in before)  # the erase term pulls W'c to Wc*
    assert all(0 < kept[k] < before[k] for k in before)  # the retain tokens move, less than the erased one did
    assert all(v == 0 for v in q.uce_kv_change(tiny_pipe, tiny_pipe, object_task)["retain tokens: ‖W'p − Wp‖/‖Wp‖"].values())


def test_attention_maps_are_per_layer_and_scaled_per_column(tiny_pipe):
    import copy

    other = copy.deepcopy(tiny_pipe.unet)
    with torch.no_grad():
        for n, p in other.named_parameters():
            if ".attn2.to_k." in n:
                p.mul_(0.5)  # flatter attention
    rows, cols = q.attention_maps({"base": tiny_pipe, "edited": uk.backbone.with_unet(tiny_pipe, other)},
                                  "a red triangle, plain style", "triangle", steps=2)
    assert list(rows) == ["base", "edited"] and len(cols) == 7 and cols[0] == "down 1.0"
    both = torch.stack(list(rows.values()))  # [models, layers, 3, H, W]
    assert both.shape[:3] == (2, 7, 3) and float(both.min()) >= 0
    assert torch.allclose(both.amax(dim=(0, 2, 3, 4)), torch.ones(7))  # each column's brightest pixel is 1
    assert not any(m._forward_hooks for m in tiny_pipe.unet.modules())


def test_ca_panel_target_moves_with_the_model(tiny_pipe):
    rows, cols = q.ca_panel(tiny_pipe, tiny_pipe, "a red triangle, plain style", "a red blob, plain style",
                            timesteps=(300,), steps=2)
    assert cols == ["t=300"] and len(rows) == 5
    first, last = rows["target, first step: base, c_a"], rows["target, last step: unlearned, c_a"]
    assert torch.equal(first, last)  # the unlearned model is the base here
