"""Each loss and class weighting against a value computed by hand from its paper's formula."""
import math

import numpy as np
import pytest
import torch

from pipeline.config import LossConfig
from pipeline.losses import CLASS_WEIGHTS, LOSSES, class_weight_at, create_loss, posthoc_adjust


def loss_of(name, counts, logits, target, weight=None, **cfg):
    fn = create_loss(counts, LossConfig(name=name, **cfg))
    w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    return fn(torch.tensor(logits, dtype=torch.float32), torch.tensor(target), w).item()


def test_cross_entropy_and_its_weighted_mean():
    assert loss_of("ce", [5, 5, 5], [[2.0, 0, 0]], [0]) == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    # two samples, weights 1 and 3: (1 * log 2 + 3 * log 2) / (1 + 3) for equal logits
    assert loss_of("ce", [5, 5], [[0, 0], [0, 0]], [0, 1], weight=[1, 3]) == pytest.approx(math.log(2), rel=1e-6)
    # and with unequal per-sample losses the weights matter: (1 * a + 3 * b) / 4
    a, b = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert loss_of("ce", [5, 5], [[1.0, 0], [1.0, 0]], [0, 1], weight=[1, 3]) == pytest.approx((a + 3 * b) / 4, rel=1e-6)


def test_effective_number_weights_follow_cui_et_al():
    w = CLASS_WEIGHTS.get("effective_number")([100, 10], 0.99)
    raw = [(1 - 0.99) / (1 - 0.99 ** 100), (1 - 0.99) / (1 - 0.99 ** 10)]
    assert w == pytest.approx([2 * r / sum(raw) for r in raw], rel=1e-9)
    assert w.sum() == pytest.approx(2)


def test_inverse_frequency_weights():
    assert CLASS_WEIGHTS.get("inverse")([300, 100], 0.9999) == pytest.approx([0.5, 1.5])


def test_ldam_subtracts_the_count_based_margin_then_scales():
    # counts 16 and 1: margins proportional to n^(-1/4) = 1/2 and 1, rescaled so the largest is 0.5.
    # The cosine head gives s * cos = 30 * [0.5, 0.2] = [15, 6].
    got = loss_of("ldam", [16, 1], [[15.0, 6.0]], [0], ldam_max_m=0.5, ldam_s=30)
    # adjusted logits: 30 * (0.5 - 0.25) = 7.5 and 30 * 0.2 = 6
    assert got == pytest.approx(math.log(1 + math.exp(6 - 7.5)), rel=1e-6)
    got_tail = loss_of("ldam", [16, 1], [[6.0, 15.0]], [1], ldam_max_m=0.5, ldam_s=30)
    assert got_tail == pytest.approx(math.log(1 + math.exp(6 - 0.0)), rel=1e-6)  # 30 * (0.5 - 0.5) = 0


def test_balanced_softmax_adds_the_log_prior():
    assert loss_of("balanced_softmax", [3, 1], [[0.0, 0.0]], [1]) == pytest.approx(math.log(4), rel=1e-6)


def test_logit_adjusted_loss_uses_tau_times_the_log_prior():
    # tau = 2: exp(2 log .25) / (exp(2 log .75) + exp(2 log .25)) = .0625 / .625 = 0.1
    assert loss_of("logit_adjust", [3, 1], [[0.0, 0.0]], [1], logit_tau=2.0) == pytest.approx(-math.log(0.1), rel=1e-6)


def test_posthoc_adjustment_subtracts_the_log_prior():
    log_prior = torch.log(torch.tensor([0.75, 0.25]))
    out = posthoc_adjust(torch.zeros(1, 2), log_prior, 1.0)
    assert out.argmax().item() == 1 and out[0, 1] - out[0, 0] == pytest.approx(math.log(3), rel=1e-6)


def test_focal_down_weights_easy_examples():
    # p = 0.5: (1 - 0.5)^2 * log 2
    assert loss_of("focal", [5, 5], [[0.0, 0.0]], [0], focal_gamma=2.0) == pytest.approx(0.25 * math.log(2), rel=1e-6)
    assert loss_of("focal", [5, 5], [[0.0, 0.0]], [0], focal_gamma=0.0) == pytest.approx(math.log(2), rel=1e-6)


def test_sigmoid_losses_sum_binary_terms_and_weight_by_the_true_class():
    assert loss_of("sigmoid", [5, 5], [[0.0, 0.0]], [0]) == pytest.approx(2 * math.log(2), rel=1e-6)
    assert loss_of("sigmoid", [5, 5], [[0.0, 0.0]], [1], weight=[0.5, 1.5]) == pytest.approx(3 * math.log(2), rel=1e-6)
    # focal modulation with p_t = 0.5 and gamma 1 halves each term
    assert loss_of("sigmoid_focal", [5, 5], [[0.0, 0.0]], [0], focal_gamma=1.0) == pytest.approx(math.log(2), rel=1e-6)


def test_drw_schedule_applies_weights_only_from_the_switch_epoch():
    cfg = LossConfig(class_weights="effective_number", weights_schedule="drw")
    assert class_weight_at(159, 160, [100, 10], cfg) is None
    assert class_weight_at(160, 160, [100, 10], cfg) is not None
    always = LossConfig(class_weights="inverse")
    assert class_weight_at(0, 160, [100, 10], always).tolist() == pytest.approx([2 / 11, 20 / 11])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_differentiable_and_keeps_per_class_tensors_as_buffers(name):
    fn = create_loss([50, 10, 2], LossConfig(name=name))
    logits = torch.randn(8, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    for weight in (None, torch.tensor([0.2, 1.0, 1.8])):
        loss = fn(logits, target, weight)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert not list(fn.parameters())
    assert all(isinstance(b, torch.Tensor) for b in fn.buffers())


def test_unknown_loss_lists_the_registered_ones():
    with pytest.raises(KeyError, match="unknown loss 'ldma'.*did you mean ldam"):
        create_loss([1, 2], LossConfig(name="ldma"))
