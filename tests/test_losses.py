import pytest
import torch

from unlearnkit import losses


def test_simple_loss_is_mse():
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert losses.simple_loss(a, b).item() == 1.0
    assert losses.simple_loss(a, a).item() == 0.0


def test_ga_is_negative_simple_plus_retain():
    f, n = torch.full((2, 2), 2.0), torch.zeros(2, 2)
    assert losses.ga_loss(f, n).item() == -4.0
    assert losses.ga_loss(f, n, f, n, alpha=0.5).item() == -2.0


def test_esd_target_is_negative_guidance():
    uncond, cond = torch.zeros(3), torch.ones(3)
    assert torch.equal(losses.esd_target(uncond, cond, eta=1.0), -torch.ones(3))
    assert torch.equal(losses.esd_target(uncond, cond, eta=0.0), uncond)


def test_regression_target_carries_no_gradient():
    pred = torch.zeros(3, requires_grad=True)
    target = torch.ones(3, requires_grad=True)
    losses.regression_loss(pred, target).backward()
    assert target.grad is None and pred.grad is not None


def test_saliency_mask_keeps_the_largest_share():
    grads = {"a": torch.tensor([0.1, 5.0, 0.2, 3.0]), "b": torch.tensor([-4.0, 0.0, 0.05, -0.3])}
    mask = losses.saliency_mask(grads, 0.5)
    assert mask["a"].tolist() == [False, True, False, True]
    assert mask["b"].tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="ratio"):
        losses.saliency_mask(grads, 0)


def test_ewc_penalty_is_fisher_weighted_distance():
    p, p0, f = [torch.tensor([1.0, 2.0])], [torch.tensor([0.0, 0.0])], [torch.tensor([2.0, 0.5])]
    assert losses.ewc_penalty(p, p0, f).item() == pytest.approx(2.0 + 2.0)
    assert losses.ewc_penalty(p0, p0, f).item() == 0.0


def test_help_loss_is_zero_at_the_base_and_weights_the_unconditional_branch():
    x = torch.randn(4, 3)
    assert losses.help_loss(x, x, x, x).item() == 0.0
    y = x + 1
    assert losses.help_loss(x, x, y, x, uncond_weight=0.5).item() == pytest.approx(0.5)
    assert losses.help_loss(y, x, y, x, uncond_weight=0.0).item() == pytest.approx(1.0)


def test_saddle_lagrangian_and_projected_dual_step():
    # the forget-loss form g = τ − L_F through the one Lagrangian and the one dual step (eqs. 17, 19, 22)
    help, lf, tau = torch.tensor(0.2), torch.tensor(0.5), 1.0
    assert losses.constrained_lagrangian(help, tau - lf, mu=2.0, weight=1.0).item() == pytest.approx(0.2 + 2 * 0.5)
    # forget loss below τ: μ grows; above τ: μ shrinks, never below 0
    assert losses.dual_ascent(1.0, tau - 0.5, mu_lr=2.0) == pytest.approx(2.0)
    assert losses.dual_ascent(0.5, tau - 3.0, mu_lr=2.0) == 0.0
    mu = torch.tensor(1.0, dtype=torch.float64)  # on the device, as Saddle keeps it: a tensor back, clamped at 0
    assert float(losses.dual_ascent(mu, torch.tensor(tau - 0.5), mu_lr=2.0)) == pytest.approx(2.0)
    assert not hasattr(losses, "saddle_lagrangian")  # one pair, not two that say the same
