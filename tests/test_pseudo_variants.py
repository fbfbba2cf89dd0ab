"""The semi-supervised variants of ours (issue 15, item 5): logit-adjusted loss on the pseudo-labeled
rows and strong augmentation (RandAugment + Cutout) of them, pinned against torchvision's own
RandAugment and a numpy cross-entropy."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op

from pipeline.config import ConfigError, resolve
from pipeline.data import Augment, ImageSet, Strong, semi_loader
from pipeline.losses import create_loss
from pipeline.objectives import OBJECTIVES, phases
from pipeline.strong_augment import OPS, SIGNED, cutout, draws, op_magnitude, randaugment

ROOT = Path(__file__).resolve().parent.parent
TORCHVISION_NAMES = dict(zip(OPS, ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                                   "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast",
                                   "Equalize")))


def images(n=64, size=12, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_randaugment_magnitudes_are_torchvisions_table():
    space = RandAugment()._augmentation_space(31, (12, 20))
    for op in OPS:
        table, signed = space[TORCHVISION_NAMES[op]]
        assert signed == (op in SIGNED), op
        for m in range(31):
            want = float(table[m]) if table.ndim else 0.0
            assert op_magnitude(op, m, 12, 20) == pytest.approx(want, abs=1e-4), (op, m)


def test_batched_randaugment_equals_torchvision_applied_image_by_image():
    x = images()
    out = randaugment(x, ops=2, magnitude=13, gen=torch.Generator().manual_seed(3))
    which, sign = draws(len(x), 2, torch.Generator().manual_seed(3))  # the same draws, replayed
    space = RandAugment()._augmentation_space(31, (12, 12))
    for i in range(len(x)):
        img = x[i]
        for layer in range(2):
            name = TORCHVISION_NAMES[OPS[which[layer, i]]]
            table, signed = space[name]
            mag = float(table[13]) if table.ndim else 0.0
            mag = mag * float(sign[layer, i]) if signed else mag
            img = _apply_op(img, name, mag, interpolation=InterpolationMode.NEAREST, fill=None)
        assert torch.equal(out[i], img), (i, [OPS[k] for k in which[:, i]])
    assert set(which.flatten().tolist()) == set(range(len(OPS)))  # every op was exercised


def test_randaugment_at_magnitude_zero_changes_only_through_the_magnitude_free_ops():
    x = images()
    out = randaugment(x, ops=1, magnitude=0, gen=torch.Generator().manual_seed(1))
    which, _ = draws(len(x), 1, torch.Generator().manual_seed(1))
    free = {OPS.index(op) for op in ("autocontrast", "equalize", "posterize", "solarize")}  # posterize 8 bits, solarize 255
    for i, k in enumerate(which[0].tolist()):
        if k not in free:
            assert torch.equal(out[i], x[i]), OPS[k]


def test_cutout_blanks_one_square_per_image_clipped_at_the_border():
    x = torch.ones(500, 3, 10, 10)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    cut = (out == 0).all(dim=1)  # n x h x w, the same pixels in every channel
    assert torch.equal((out == 0).any(dim=1), cut)
    areas = cut.sum(dim=(1, 2))
    assert areas.max() == 16 and areas.min() >= 4  # 4 x 4 inside, a 2 x 2 corner at worst
    for i in range(len(x)):
        rows, cols = cut[i].any(1).nonzero().flatten(), cut[i].any(0).nonzero().flatten()
        assert areas[i] == len(rows) * len(cols)  # a rectangle
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
    assert cut.any(0).all()  # every pixel is cut somewhere: centres cover the image
    assert torch.equal(cutout(x, 0), x)


def test_strong_augmentation_touches_only_the_pseudo_labeled_rows():
    x = images(32)
    strong = torch.arange(32) >= 20
    plain = Augment([0.5] * 3, [0.25] * 3, "none")
    out = Augment([0.5] * 3, [0.25] * 3, "none", strong=Strong(2, 20, 6))(x, torch.Generator().manual_seed(0),
                                                                       strong=strong)
    reference = plain(x)
    assert torch.equal(out[:20], reference[:20])
    assert all(not torch.equal(out[i], reference[i]) for i in range(20, 32))
    cut = (out[20:] == 0).all(dim=1).sum(dim=(1, 2))
    assert (cut >= 9).all()  # at least the 3 x 3 corner of a 6-pixel cutout, at the channel mean
    assert torch.equal(Augment([0.5] * 3, [0.25] * 3, "none", strong=Strong())(x, strong=strong, train=False),
                       reference)  # evaluation never augments


def semi_cfg(*extra):
    return resolve([str(ROOT / "conf/methods/ce.yaml")], [("train.semi.pseudo_labels", "x"), *extra]).train


def log_softmax_ce(z, y):
    z = z - z.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


def test_logit_adjusted_pseudo_loss_is_ce_of_the_shifted_logits_on_the_pseudo_rows_only():
    cfg = semi_cfg(("train.semi.loss", "logit_adjusted"), ("train.semi.tau", "0.7"))
    assert phases(cfg)[0].objective == "union_split_loss"
    counts = [60, 30, 10]
    logits = torch.randn(12, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2] * 4)
    is_pseudo = torch.tensor([True, False] * 6)
    loss, _, _ = OBJECTIVES.get("union_split_loss")(cfg)(lambda x: logits, create_loss(counts, cfg.loss), None, y, None,
                                                         is_pseudo)
    z, t, m = logits.numpy(), y.numpy(), is_pseudo.numpy()
    shifted = z + 0.7 * np.log(np.array(counts) / 100)
    want = (log_softmax_ce(z[~m], t[~m]).sum() + log_softmax_ce(shifted[m], t[m]).sum()) / 12
    assert loss.item() == pytest.approx(want, rel=1e-7)  # the loss keeps its log prior in float32
    # pseudo_loss=same with union batches is the reference's one criterion, the plain classify objective
    assert phases(semi_cfg())[0].objective == "classify"


def test_union_loader_with_randaugment_augments_the_pseudo_labeled_images_only():
    cfg = semi_cfg(("train.semi.augment", "randaugment"), ("train.batch_size", "16"), ("train.semi.cutout", "0"),
                   ("train.semi.randaugment_magnitude", "30"), ("train.data.augment", "none"))
    lab = ImageSet(images(30, seed=1), torch.tensor([0] * 20 + [1] * 10), [f"l{i}" for i in range(30)])
    pse = ImageSet(images(50, seed=2), torch.tensor([1] * 40 + [0] * 10), [f"u{i}" for i in range(50)])
    from pipeline.data import make_augment

    augment = make_augment(lab.images, cfg)
    loader = semi_loader(lab, pse, [20, 10], cfg, augment)
    plain = Augment(augment.mean.flatten().tolist(), augment.std.flatten().tolist(), "none")
    union = torch.cat([lab.images, pse.images])
    changed = 0
    for x, y, is_pseudo in loader.epoch(0):
        for row, flag in zip(x, is_pseudo):
            match = (plain(union) - row).abs().amax(dim=(1, 2, 3)) == 0
            if not flag:
                assert match[:30].any()  # a labeled image, untouched
            changed += int(bool(flag) and not match.any())
    assert changed >= 40  # pseudo-labeled images come out changed (identity and no-op draws aside)


def test_pseudo_variants_without_pseudo_labels_are_refused_by_name():
    with pytest.raises(ConfigError, match="train.semi.loss=logit_adjusted.*train.semi.pseudo_labels"):
        resolve([str(ROOT / "conf/methods/ce.yaml")], [("train.semi.loss", "logit_adjusted")])
    with pytest.raises(ConfigError, match="randaugment_magnitude"):
        semi_cfg(("train.semi.randaugment_magnitude", "31"))
