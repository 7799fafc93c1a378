"""The retention metric's calibration probes: weight noise of a known size, and the LPIPS ladder."""

import pytest
import torch

from unlearnkit import world
from unlearnkit.data import pipeline_fingerprint
from unlearnkit.evaluation import LPIPSDistance
from unlearnkit.evaluation.probes import lpips_ladder, shift, weight_noise


def test_weight_noise_has_the_asked_size_and_leaves_the_base_alone(tiny_pipe):
    before = pipeline_fingerprint(tiny_pipe)
    assert pipeline_fingerprint(weight_noise(tiny_pipe, 0.0)) == before
    noisy = weight_noise(tiny_pipe, 0.1, seed=3)
    assert pipeline_fingerprint(tiny_pipe) == before
    assert pipeline_fingerprint(noisy) == pipeline_fingerprint(weight_noise(tiny_pipe, 0.1, seed=3))
    assert pipeline_fingerprint(noisy) != pipeline_fingerprint(weight_noise(tiny_pipe, 0.1, seed=4))
    assert noisy.text_encoder is tiny_pipe.text_encoder
    pairs = zip(tiny_pipe.unet.state_dict().values(), noisy.unet.state_dict().values())
    ratios = [float((q - p).std() / p.std()) for p, q in pairs if p.numel() > 1000]
    assert 0.09 < sum(ratios) / len(ratios) < 0.11
    with pytest.raises(ValueError, match="must be >= 0"):
        weight_noise(tiny_pipe, -1)


def test_shift_moves_right_and_repeats_the_edge():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 3, 2, 4)
    assert shift(x, 1)[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="pixels"):
        shift(x, 4)


def test_lpips_ladder_rungs(tiny_pipe):
    p = world.prompt("circle", "red", "striped")
    ladder = lpips_ladder(tiny_pipe, p, LPIPSDistance(), steps=2)
    assert list(ladder) == ["itself", "1-pixel shift", "another seed", "another colour", "another object"]
    assert ladder["itself"]["lpips"] == 0 and all(r["lpips"] > 0 for n, r in ladder.items() if n != "itself")
    assert ladder["another seed"]["seed"] == 1 and ladder["another colour"]["prompt"] == "a blue circle, striped style"
    assert ladder["another object"]["prompt"] == "a red star, striped style"
    assert torch.equal(ladder["1-pixel shift"]["image"][..., 1:], ladder["itself"]["image"][..., :-1])
    with pytest.raises(ValueError, match="must differ"):
        lpips_ladder(tiny_pipe, p, LPIPSDistance(), colour="red", steps=2)


def test_smallest_detected_is_the_first_scale_whose_interval_leaves_the_undamaged_one():
    from unlearnkit.evaluation.probes import smallest_detected

    results = {0.0: {"m_ci": (0.0, 0.1)}, 0.1: {"m_ci": (0.05, 0.2)}, 0.3: {"m_ci": (0.15, 0.3)},
               0.6: {"m_ci": (0.4, 0.5)}}
    assert smallest_detected(results, "m") == 0.3  # 0.1 overlaps [0, 0.1]; 0.3 starts above it
    results[0.3]["m_ci"] = (-0.3, -0.2)  # below the reference counts too (accuracy falls)
    assert smallest_detected(results, "m") == 0.3
    assert smallest_detected({0.0: {"m_ci": (0, 1)}, 0.1: {"m_ci": (0.5, 0.9)}}, "m") is None
