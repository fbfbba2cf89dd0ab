"""Samplers, the lr/DRW schedule, metrics (against scikit-learn) and the model registry."""
import numpy as np
import pytest
import torch

from models import MODELS, create_model
from pipeline.config import ScheduleConfig
from pipeline.metrics import evaluate_logits, expected_calibration_error
from pipeline.samplers import SAMPLERS, epoch_indices
from pipeline.schedule import drw_epoch, lr_at


def test_class_balanced_sampler_draws_classes_equally_often():
    labels = np.repeat(np.arange(3), [900, 90, 10])
    counts = np.bincount(labels)
    drawn = np.concatenate([labels[epoch_indices("class_balanced", labels, counts, seed=0, epoch=e)] for e in range(20)])
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    assert freq == pytest.approx([1 / 3] * 3, abs=0.01)


def test_random_sampler_visits_every_example_once_and_shards_disjointly():
    labels = np.repeat(np.arange(2), [7, 4])
    shards = [epoch_indices("random", labels, [7, 4], seed=1, epoch=3, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5  # equal steps on every rank
    assert not set(shards[0]) & set(shards[1])
    whole = epoch_indices("random", labels, [7, 4], seed=1, epoch=3)
    assert sorted(whole) == list(range(11))
    assert list(whole) == list(epoch_indices("random", labels, [7, 4], seed=1, epoch=3))  # seeded
    assert list(whole) != list(epoch_indices("random", labels, [7, 4], seed=1, epoch=4))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_returns_valid_indices(name):
    labels = np.repeat(np.arange(3), [20, 5, 1])
    idx = epoch_indices(name, labels, np.bincount(labels), seed=0, epoch=0)
    assert len(idx) == len(labels) and idx.min() >= 0 and idx.max() < len(labels)


def test_reference_schedule_at_200_epochs():
    s = ScheduleConfig()
    assert [lr_at(e, 200, 0.1, s) for e in (0, 4, 5, 159)] == pytest.approx([0.02, 0.1, 0.1, 0.1])
    assert lr_at(160, 200, 0.1, s) == pytest.approx(0.001) and lr_at(179, 200, 0.1, s) == pytest.approx(0.001)
    assert lr_at(180, 200, 0.1, s) == pytest.approx(0.1 * 0.0001)
    assert drw_epoch(200, s) == 160


def test_short_runs_keep_the_same_shape():
    s = ScheduleConfig()
    assert lr_at(0, 20, 0.1, s) == pytest.approx(0.1)  # one warm-up epoch at least
    assert lr_at(15, 20, 0.1, s) == pytest.approx(0.1) and lr_at(16, 20, 0.1, s) == pytest.approx(0.001)
    assert lr_at(18, 20, 0.1, s) == pytest.approx(1e-5) and drw_epoch(20, s) == 16


def test_metrics_agree_with_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    logits = rng.normal(size=(500, 7)) + 2.0 * np.eye(7)[labels] * rng.random((500, 1))
    out = evaluate_logits(logits, labels, train_counts=[500, 200, 101, 100, 20, 19, 5])
    pred = logits.argmax(1)
    assert out["top1"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert out["top5"] == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5))
    assert out["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert out["confusion"] == skm.confusion_matrix(labels, pred).tolist()
    recall = skm.recall_score(labels, pred, average=None)
    assert out["many_accuracy"] == pytest.approx(recall[[0, 1, 2]].mean())  # > 100 images
    assert out["medium_accuracy"] == pytest.approx(recall[[3, 4]].mean())  # 20..100
    assert out["few_accuracy"] == pytest.approx(recall[[5, 6]].mean())  # < 20
    top5 = [skm.top_k_accuracy_score(labels[labels == c], logits[labels == c], k=5, labels=range(7)) for c in range(7)]
    assert out["per_class_top5"] == pytest.approx(top5)


def test_ece_by_hand():
    # two samples at confidence 0.9 (one right, one wrong) and two at 0.6 (both right):
    # |0.5 - 0.9| * 0.5 + |1.0 - 0.6| * 0.5 = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.4)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 8), (3, 32)])
def test_every_model_classifies_any_channel_count_and_size(name, shape):
    channels, size = shape
    model = create_model(name, num_classes=5, in_channels=channels, image_size=size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 5)
    assert model.features(torch.randn(2, channels, size, size)).shape == (2, model.embed_dim)


def test_resnet32_has_the_published_size():
    assert sum(p.numel() for p in create_model("resnet32", num_classes=10, in_channels=3,
                                               image_size=32).parameters()) == 464154  # 0.46M (He et al.)


def test_normed_head_outputs_scaled_cosines():
    model = create_model("resnet32", num_classes=4, in_channels=3, image_size=32, head="normed", head_scale=30.0)
    out = model(torch.randn(3, 3, 32, 32))
    cosines = out / 30.0
    assert cosines.abs().max() <= 1.0 + 1e-5 and cosines.abs().max() > 0.01


@pytest.mark.parametrize("name", ["unet_ae", "mobilenetv2_ae"])
def test_autoencoders_reconstruct_the_input_shape_and_export_without_the_decoder(name):
    model = create_model(name, num_classes=4, in_channels=3, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    logits, recon = model(x, output="both")
    assert logits.shape == (2, 4) and recon.shape == x.shape
    assert model(x, output="reconstruction").shape == x.shape
    plain = model.classifier()
    assert not any(k.startswith("decoder") for k in plain.state_dict())
    model.eval()
    assert torch.allclose(plain(x), model(x))  # same encoder and head
