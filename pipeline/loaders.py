"""Building the training loader of a run: the in-memory one (pipeline.data) or the petastorm one
(pipeline.petastorm_loader), chosen by decoded size. It imports both; neither imports it."""
from __future__ import annotations

from typing import Optional

from pipeline.config import TrainConfig
from pipeline.data import ImageSet, MemoryLoader, decoded_bytes, load_split, make_augment
from pipeline.petastorm_loader import PetastormLoader


def choose_loader(split_dir: str, cfg: TrainConfig) -> str:
    if cfg.data.loader != "auto":
        return cfg.data.loader
    return "memory" if decoded_bytes(split_dir) <= cfg.data.memory_limit_mb * 2 ** 20 else "petastorm"


STATS_ROWS = 10_000  # images the normalisation statistics are measured on when streaming


def make_loader(kind: str, split_dir: Optional[str], counts, cfg: TrainConfig, rank: int, world: int, device,
                data: Optional[ImageSet] = None, normalization: Optional[dict] = None):
    """(loader, sample of the split for statistics and shape) for ``kind`` = memory or petastorm;
    the memory loader takes already decoded ``data`` instead of ``split_dir`` when given."""
    if kind == "memory":
        data = data if data is not None else load_split(split_dir)
        augment = make_augment(data.images, cfg, normalization)
        return MemoryLoader(data.to(device), counts, cfg, augment, rank, world), data
    sample = load_split(split_dir, max_rows=STATS_ROWS)
    augment = make_augment(sample.images, cfg, normalization)
    return PetastormLoader(split_dir, counts, cfg, augment, rank, world).to(device), sample
