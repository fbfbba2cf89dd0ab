"""The epoch schedule of the reference protocol, scaled to the run's length: linear warm-up, step
decays at the milestones, the DRW switch. Epochs are 0-based."""
from __future__ import annotations

from pipeline.config import TrainConfig


def scale(epoch: int, cfg: TrainConfig) -> int:
    """An epoch number of the reference schedule, moved to a run of ``cfg.epochs`` epochs."""
    return int(round(epoch * cfg.epochs / cfg.reference_epochs))


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """As the LDAM-DRW reference: lr * (e + 1) / warmup during warm-up, then lr times the factor of
    the last milestone passed (milestone m applies from epoch m on)."""
    warmup = max(1, scale(cfg.warmup_epochs, cfg)) if cfg.warmup_epochs else 0  # short runs keep a warm-up
    if epoch < warmup:
        return cfg.lr * (epoch + 1) / warmup
    factor = 1.0
    for milestone, f in zip(cfg.lr_milestones, cfg.lr_factors):
        if epoch >= scale(milestone, cfg):
            factor = f
    return cfg.lr * factor


def drw_epoch(cfg: TrainConfig) -> int:
    return scale(cfg.drw_epoch, cfg)
