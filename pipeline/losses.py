"""Losses and per-class weights for long-tailed learning, registered by name.

A loss is built from the training class counts and its own config section (``train.loss``); ``forward(logits, target,
class_weight)`` takes the per-class weights of the current epoch (None: unweighted), so deferred
re-weighting (DRW) is a schedule, not a different loss. Per-class constants are buffers.

How class weights reduce over a batch differs between the reference codes, so it is a setting
(``train.loss.weighted_reduction``) of the softmax losses: ``weighted_mean`` is
``F.cross_entropy(weight=w)`` = sum_i w_yi ce_i / sum_i w_yi (kaidic/LDAM-DRW); ``mean`` is
sum_i w_yi ce_i / N (Cui et al.'s TensorFlow code: ``softmax_cross_entropy(weights=w_y)``). The focal
loss follows LDAM-DRW's ``FocalLoss`` and the sigmoid losses Cui et al.'s code (both sum / N)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import LossConfig
from pipeline.registry import Registry

LOSSES: Registry = Registry("loss")
CLASS_WEIGHTS: Registry = Registry("class weighting")


# --- per-class weights (pure numpy) -----------------------------------------------------------

@CLASS_WEIGHTS.register("none")
def no_weights(counts: Sequence[int], beta: float) -> Optional[np.ndarray]:
    return None


@CLASS_WEIGHTS.register("inverse")
def inverse_frequency(counts: Sequence[int], beta: float) -> np.ndarray:
    """w_c proportional to 1 / n_c, normalised to sum to C."""
    w = 1.0 / np.maximum(np.asarray(counts, dtype=np.float64), 1)
    return w * len(w) / w.sum()


@CLASS_WEIGHTS.register("effective_number")
def effective_number(counts: Sequence[int], beta: float) -> np.ndarray:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C."""
    n = np.asarray(counts, dtype=np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, np.maximum(n, 1)))
    return w * len(w) / w.sum()


def class_weight_at(epoch: int, drw_epoch: int, counts: Sequence[int], cfg: LossConfig) -> Optional[torch.Tensor]:
    """The per-class weights in force at ``epoch`` (0-based); with the DRW schedule none before ``drw_epoch``."""
    if cfg.weights_schedule == "drw" and epoch < drw_epoch:
        return None
    w = CLASS_WEIGHTS.get(cfg.class_weights)(counts, cfg.cb_beta)
    return None if w is None else torch.tensor(w, dtype=torch.float32)


# --- losses -----------------------------------------------------------------------------------

class LongTailLoss(nn.Module):
    """Softmax cross-entropy on (possibly adjusted) logits. Subclasses change ``adjusted`` or
    ``forward``; ``prepare_head`` and ``decay_head_bias`` let a loss set up the classifier it needs."""

    decay_head_bias = True  # False: the head's bias gets no weight decay

    def __init__(self, counts: Sequence[int], cfg: LossConfig):
        super().__init__()
        counts_t = torch.tensor(counts, dtype=torch.float32)
        self.register_buffer("log_prior", torch.log(counts_t.clamp(min=1) / counts_t.sum()))
        self.weighted_mean = cfg.weighted_reduction == "weighted_mean"

    def adjusted(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits

    def prepare_head(self, head: nn.Module) -> None:
        """Initialise the freshly built classifier head (nothing for softmax losses)."""

    def forward(self, logits, target, class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.adjusted(logits, target)
        if class_weight is None or self.weighted_mean:
            w = None if class_weight is None else class_weight.to(logits.device)
            return F.cross_entropy(logits, target, weight=w)
        per_sample = F.cross_entropy(logits, target, reduction="none")
        return (class_weight.to(logits.device)[target] * per_sample).mean()


@LOSSES.register("ce")
class CrossEntropy(LongTailLoss):
    pass


@LOSSES.register("balanced_softmax")
class BalancedSoftmax(LongTailLoss):
    """Ren et al. 2020: softmax over logits + log n_c (the log prior)."""

    def adjusted(self, logits, target):
        return logits + self.log_prior


@LOSSES.register("logit_adjust")
class LogitAdjusted(LongTailLoss):
    """Menon et al. 2021, logit-adjusted loss: logits + tau * log prior."""

    def __init__(self, counts, cfg):
        super().__init__(counts, cfg)
        self.tau = cfg.logit_tau

    def adjusted(self, logits, target):
        return logits + self.tau * self.log_prior


@LOSSES.register("ldam")
class LDAM(LongTailLoss):
    """Cao et al. 2019: subtract the margin m_y = C / n_y^(1/4) (largest = max_m), times s, from the
    true class's logit. With the cosine head (logits = s cos) this is the paper's s (cos - m_y)."""

    def __init__(self, counts, cfg):
        super().__init__(counts, cfg)
        m = 1.0 / np.sqrt(np.sqrt(np.maximum(np.asarray(counts, dtype=np.float64), 1)))
        self.register_buffer("margins", torch.tensor(m * (cfg.ldam_max_m / m.max()), dtype=torch.float32))
        self.s = cfg.ldam_s

    def adjusted(self, logits, target):
        margin = F.one_hot(target, logits.shape[1]) * self.margins[target].unsqueeze(1)
        return logits - self.s * margin


@LOSSES.register("focal")
class Focal(LongTailLoss):
    """Lin et al. 2017 (softmax form) as LDAM-DRW's ``FocalLoss``: with the per-example weighted
    cross-entropy ce_i = w_yi * CE_i (w = 1 unweighted) and p_i = exp(-ce_i), the loss is the plain
    mean over the batch of (1 - p_i)^gamma * ce_i."""

    def __init__(self, counts, cfg):
        super().__init__(counts, cfg)
        self.gamma = cfg.focal_gamma

    def forward(self, logits, target, class_weight=None):
        ce = F.cross_entropy(logits, target, reduction="none")
        if class_weight is not None:
            ce = class_weight.to(logits.device)[target] * ce
        return ((1 - torch.exp(-ce)) ** self.gamma * ce).mean()


@LOSSES.register("sigmoid")
class SigmoidCE(LongTailLoss):
    """Per-class sigmoid cross-entropy (Cui et al.'s CB sigmoid with class weights): mean over the
    batch of w_y * sum_j BCE(z_j, [j == y]). As in their code, the head's bias starts at
    -log(C - 1) (every class at prior 1/C) and gets no weight decay."""

    focal_gamma = 0.0
    decay_head_bias = False

    def prepare_head(self, head):
        if getattr(head, "bias", None) is None:
            raise ValueError(f"loss {type(self).__name__} initialises the head's bias, but the head has none")
        with torch.no_grad():
            head.bias.fill_(-np.log(head.bias.numel() - 1))

    def forward(self, logits, target, class_weight=None):
        onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        if self.focal_gamma:
            # (1 - p_t)^gamma in Cui et al.'s stable form exp(-g y z - g log(1 + e^-z)): the direct power
            # has an infinite gradient at p_t = 1 for gamma < 1
            bce = torch.exp(-self.focal_gamma * (onehot * logits + F.softplus(-logits))) * bce
        per_sample = bce.sum(dim=1)
        if class_weight is not None:
            per_sample = class_weight.to(logits.device)[target] * per_sample
        return per_sample.mean()


@LOSSES.register("sigmoid_focal")
class SigmoidFocal(SigmoidCE):
    """Cui et al.'s CB focal: the sigmoid loss with the focal modulation (1 - p_t)^gamma."""

    def __init__(self, counts, cfg):
        super().__init__(counts, cfg)
        self.focal_gamma = cfg.focal_gamma


def create_loss(counts: Sequence[int], cfg: LossConfig) -> LongTailLoss:
    return LOSSES.get(cfg.name)(counts, cfg)


def posthoc_adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Menon et al. post-hoc logit adjustment: predict with logits - tau * log prior."""
    return logits - tau * log_prior.to(logits.device) if tau else logits
