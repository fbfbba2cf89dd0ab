"""The epoch schedule of the reference protocol (``train.schedule``), scaled to the run's length:
linear warm-up, step decays at the milestones, the DRW switch. Epochs are 0-based."""
from __future__ import annotations

from pipeline.config import ScheduleConfig


def scale(epoch: int, epochs: int, s: ScheduleConfig) -> int:
    """An epoch number of the reference schedule, moved to a run of ``epochs`` epochs."""
    return int(round(epoch * epochs / s.reference_epochs))


def lr_at(epoch: int, epochs: int, lr: float, s: ScheduleConfig) -> float:
    """As the LDAM-DRW reference: lr * (e + 1) / warmup during warm-up, then lr times the factor of
    the last milestone passed (milestone m applies from epoch m on)."""
    warmup = max(1, scale(s.warmup_epochs, epochs, s)) if s.warmup_epochs else 0  # short runs keep a warm-up
    if epoch < warmup:
        return lr * (epoch + 1) / warmup
    factor = 1.0
    for milestone, f in zip(s.lr_milestones, s.lr_factors):
        if epoch >= scale(milestone, epochs, s):
            factor = f
    return lr * factor


def drw_epoch(epochs: int, s: ScheduleConfig) -> int:
    return scale(s.drw_epoch, epochs, s)
