"""What the method notebooks show: weight change per block, SalUn's mask share, SA's Fisher mass, ESD's panel."""

import copy

import torch

import unlearnkit as uk
from unlearnkit import quantities as q


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
