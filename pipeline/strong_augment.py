"""Strong augmentation for pseudo-labeled images (``train.semi.augment=randaugment``, a variant of
ours, not part of Yang & Xu's recipe): RandAugment (Cubuk et al. 2020) with torchvision's op list and
magnitudes, then Cutout (DeVries & Taylor 2017), as FixMatch and its long-tailed successors use them.

Batched: every image draws its own ``ops`` operations and signs from an explicit generator, and the
images that drew the same (operation, sign) go through torchvision's functional op together, so a
batch costs at most 2 x 14 x ``ops`` kernel calls on its device whatever its size. Pure functions of
(images, generator): a resumed run draws what the uninterrupted one drew."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

BINS = 31  # torchvision's RandAugment num_magnitude_bins: magnitudes are indices 0..30
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                    "contrast", "sharpness"})


def op_magnitude(op: str, magnitude: int, height: int, width: int) -> float:
    """The strength of ``op`` at ``magnitude`` (0..30), as torchvision's RandAugment tabulates it."""
    t = magnitude / (BINS - 1)
    if op in ("shear_x", "shear_y"):
        return 0.3 * t
    if op == "translate_x":
        return 150.0 / 331.0 * width * t
    if op == "translate_y":
        return 150.0 / 331.0 * height * t
    if op == "rotate":
        return 30.0 * t
    if op in ("brightness", "color", "contrast", "sharpness"):
        return 0.9 * t
    if op == "posterize":
        return float(8 - int(round(magnitude / ((BINS - 1) / 4))))
    if op == "solarize":
        return 255.0 * (1 - t)
    return 0.0


def apply_op(images: torch.Tensor, op: str, value: float) -> torch.Tensor:
    """One RandAugment operation on uint8 images (N x C x H x W), ``value`` signed where the op is."""
    nearest = InterpolationMode.NEAREST
    if op == "identity":
        return images
    if op in ("shear_x", "shear_y"):
        shear = math.degrees(math.atan(value))
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, interpolation=nearest, center=[0, 0],
                         shear=[shear, 0.0] if op == "shear_x" else [0.0, shear])
    if op in ("translate_x", "translate_y"):
        shift = [int(value), 0] if op == "translate_x" else [0, int(value)]
        return TF.affine(images, angle=0.0, translate=shift, scale=1.0, interpolation=nearest, shear=[0.0, 0.0])
    if op == "rotate":
        return TF.rotate(images, value, interpolation=nearest)
    if op == "brightness":
        return TF.adjust_brightness(images, 1.0 + value)
    if op == "color":
        return TF.adjust_saturation(images, 1.0 + value)
    if op == "contrast":
        return TF.adjust_contrast(images, 1.0 + value)
    if op == "sharpness":
        return TF.adjust_sharpness(images, 1.0 + value)
    if op == "posterize":
        return TF.posterize(images, int(value))
    if op == "solarize":
        return TF.solarize(images, value)
    if op == "autocontrast":
        return TF.autocontrast(images)
    if op == "equalize":
        return TF.equalize(images)
    raise ValueError(f"unknown RandAugment op {op!r}; known: {', '.join(OPS)}")


def draws(n: int, ops: int, gen: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and layer: which op (index into OPS) and which sign (+1/-1)."""
    which = torch.randint(0, len(OPS), (ops, n), generator=gen)
    sign = torch.where(torch.rand(ops, n, generator=gen) < 0.5, -1.0, 1.0)
    return which, sign


def randaugment(images: torch.Tensor, ops: int = 2, magnitude: int = 9,
                gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """RandAugment of uint8 images: ``ops`` layers, each image an op drawn uniformly per layer."""
    if images.dtype != torch.uint8:
        raise TypeError(f"randaugment works on uint8 images, got {images.dtype}")
    if not 0 <= magnitude < BINS:
        raise ValueError(f"magnitude must be in [0, {BINS - 1}], got {magnitude}")
    n, _, h, w = images.shape
    which, sign = draws(n, ops, gen)
    out = images.clone()
    for layer in range(ops):
        for k, op in enumerate(OPS):
            for s in ((-1.0, 1.0) if op in SIGNED else (1.0,)):
                rows = (which[layer] == k) & ((sign[layer] == s) | (op not in SIGNED))
                if op == "identity" or not rows.any():
                    continue
                idx = rows.nonzero().squeeze(1).to(images.device)
                out[idx] = apply_op(out[idx], op, s * op_magnitude(op, magnitude, h, w))
    return out


def cutout(x: torch.Tensor, size: int, gen: Optional[torch.Generator] = None, fill: float = 0.0) -> torch.Tensor:
    """Cutout: per image, a ``size`` x ``size`` square centred on a uniform pixel (clipped at the
    border) set to ``fill`` (0 on normalised images: the channel mean)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen).to(x.device)
    cx = torch.randint(0, w, (n,), generator=gen).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    top, left = cy[:, None] - size // 2, cx[:, None] - size // 2
    in_rows = (rows >= top) & (rows < top + size)  # n x h
    in_cols = (cols >= left) & (cols < left + size)  # n x w
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # n x 1 x h x w
    return x.masked_fill(mask, fill)
