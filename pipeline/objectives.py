"""Training objectives, registered by name: what one batch costs. The one training loop
(pipeline.train) calls ``objective(model, loss_fn, x, y, class_weight, is_pseudo)`` on every batch a
loader yields (``is_pseudo``, from the semi-supervised loaders only: which rows are pseudo-labeled) and gets ``(loss, logits or None, targets)`` back; which objective runs in which epochs
is the run's plan of phases (``phases``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from pipeline.config import SemiConfig, TrainConfig
from pipeline.data import epoch_generator, random_rotations, rotations
from pipeline.registry import Registry

OBJECTIVES: Registry = Registry("objective")
ROTATION_STREAM = 1  # epoch_generator stream of the rotation draws (0 is the augmentation's)


class Objective:
    classifies = True  # the logits predict the targets: class weights apply, train accuracy means something

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def begin_epoch(self, epoch: int, rank: int) -> None:
        """Seed whatever the objective draws at random in this epoch."""

    def __call__(self, model, loss_fn, x, y, class_weight: Optional[torch.Tensor],
                 is_pseudo: Optional[torch.Tensor] = None):
        raise NotImplementedError


@OBJECTIVES.register("classify")
class Classify(Objective):
    """The recipe's loss on the model's logits."""

    def __call__(self, model, loss_fn, x, y, class_weight, is_pseudo=None):
        logits = model(x)
        return loss_fn(logits, y, class_weight), logits, y


@OBJECTIVES.register("rotation")
class Rotation(Objective):
    """Self-supervised pre-training (Gidaris et al. 2018, as Yang & Xu 2020 use it): predict the
    rotation of each image. ``train.ssp.rotations``: ``random`` rotates each image once (the batch
    keeps its size; pretrain_rot.py), ``all`` shows every image at all four rotations."""

    def begin_epoch(self, epoch, rank):
        self.gen = epoch_generator(self.cfg.seed, epoch, rank, ROTATION_STREAM)

    def __call__(self, model, loss_fn, x, y, class_weight, is_pseudo=None):
        x, y = random_rotations(x, self.gen) if self.cfg.ssp.rotations == "random" else rotations(x)
        logits = model(x)
        return loss_fn(logits, y, class_weight), logits, y


def pseudo_loss(cfg: SemiConfig, loss_fn, logits, y, class_weight) -> torch.Tensor:
    """The loss of the pseudo-labeled rows: the recipe's (``train.semi.loss=same``) or, a variant of
    ours, logit-adjusted cross-entropy CE(f + tau * log pi) with pi the class prior the model
    trains on (labeled + pseudo-labeled counts; Menon et al. 2021), which keeps the head classes'
    surplus of pseudo-labels from pulling the decision boundaries further toward the tail."""
    if cfg.loss == "logit_adjusted":
        return F.cross_entropy(logits + cfg.tau * loss_fn.log_prior.to(logits.device), y)
    return loss_fn(logits, y, class_weight)


@OBJECTIVES.register("fixed_share")
class FixedShare(Objective):
    """Semi-supervised batches of ``MixedLoader`` (our variant): labeled rows first, then
    pseudo-labeled ones; loss = labeled loss + unlabeled_weight x pseudo-labeled loss (``pseudo_loss``)."""

    def __call__(self, model, loss_fn, x, y, class_weight, is_pseudo=None):
        logits = model(x)
        lab, pse = ~is_pseudo, is_pseudo
        pseudo = pseudo_loss(self.cfg.semi, loss_fn, logits[pse], y[pse], class_weight) if pse.any() else logits.sum() * 0
        return loss_fn(logits[lab], y[lab], class_weight) + self.cfg.semi.unlabeled_weight * pseudo, logits, y


@OBJECTIVES.register("union_split_loss")
class UnionSplitLoss(Objective):
    """Yang & Xu's union batches with another loss on their pseudo-labeled rows (``train.semi.loss``):
    the two losses weighted by their rows, (n_l * labeled loss + n_p * pseudo loss) / n, which is the
    one criterion over the batch when both are the same mean loss."""

    def __call__(self, model, loss_fn, x, y, class_weight, is_pseudo=None):
        logits = model(x)
        n_p = int(is_pseudo.sum())
        n_l = len(y) - n_p
        loss = logits.sum() * 0
        if n_l:
            loss = loss + n_l * loss_fn(logits[~is_pseudo], y[~is_pseudo], class_weight)
        if n_p:
            loss = loss + n_p * pseudo_loss(self.cfg.semi, loss_fn, logits[is_pseudo], y[is_pseudo], class_weight)
        return loss / len(y), logits, y


@OBJECTIVES.register("joint")
class Joint(Objective):
    """Autoencoder classifiers: classification + recon_weight x reconstruction MSE."""

    def __call__(self, model, loss_fn, x, y, class_weight, is_pseudo=None):
        logits, recon = model(x, output="both")
        return loss_fn(logits, y, class_weight) + self.cfg.ae.recon_weight * F.mse_loss(recon, x), logits, y


@OBJECTIVES.register("reconstruct")
class Reconstruct(Objective):
    """The autoencoder alone (the first phase of ``ae_mode=separate``)."""

    classifies = False

    def __call__(self, model, loss_fn, x, y, class_weight, is_pseudo=None):
        return F.mse_loss(model(x, output="reconstruction"), x), None, y


@dataclass(frozen=True)
class Phase:
    objective: str
    epochs: int
    frozen: bool = False  # the backbone is frozen (weights and batch-norm statistics): only the head trains


def phases(cfg: TrainConfig) -> list[Phase]:
    """The run's epochs, in order: which objective trains and whether the backbone is frozen."""
    if cfg.ae.mode == "separate":
        return [Phase("reconstruct", cfg.ae.epochs), Phase("classify", cfg.epochs, frozen=True)]
    if cfg.objective == "rotation":
        return [Phase("rotation", cfg.epochs)]
    if cfg.ae.mode == "joint":
        return [Phase("joint", cfg.epochs)]
    if cfg.semi.pseudo_labels and cfg.semi.batches == "fixed_share":
        return [Phase("fixed_share", cfg.epochs)]
    if cfg.semi.pseudo_labels and cfg.semi.loss != "same":
        return [Phase("union_split_loss", cfg.epochs)]
    return [Phase("classify", cfg.epochs)]
