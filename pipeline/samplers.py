"""Which training examples an epoch visits, registered by name. A sampler is a pure function of
(labels, class counts, Generator, ``train.sampler``) -> indices; every process draws the same epoch order
from the same seed and takes its own shard, so no distributed sampler object is needed."""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.config import SamplerConfig
from pipeline.losses import CLASS_WEIGHTS
from pipeline.registry import Registry

SAMPLERS: Registry = Registry("sampler")


@SAMPLERS.register("random")
def random_order(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator, cfg: SamplerConfig) -> np.ndarray:
    """Every example once, shuffled."""
    return rng.permutation(len(labels))


def example_probabilities(labels: np.ndarray, counts, cfg: SamplerConfig) -> np.ndarray:
    """The class_balanced sampler's probability of drawing each example: proportional to the weight
    of its class under ``cfg.weights`` (``inverse``: 1 / n_y, every class equally often;
    ``effective_number``: (1 - beta) / (1 - beta^n_y) with beta = ``cfg.cb_beta``, LDAM-DRW's
    ImbalancedDatasetSampler)."""
    w = CLASS_WEIGHTS.get(cfg.weights)(counts, cfg.cb_beta)
    if w is None:
        raise ValueError(f"train.sampler.weights={cfg.weights} gives no class weights to sample by")
    p = np.asarray(w, dtype=np.float64)[labels]
    return p / p.sum()


@SAMPLERS.register("class_balanced")
def class_balanced(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator, cfg: SamplerConfig) -> np.ndarray:
    """Over-sampling with replacement by ``example_probabilities``; an epoch has as many draws as
    there are examples."""
    return rng.choice(len(labels), size=len(labels), replace=True, p=example_probabilities(labels, counts, cfg))


def epoch_indices(name: str, labels: np.ndarray, counts, seed: int, epoch: int, rank: int = 0,
                  world: int = 1, cfg: Optional[SamplerConfig] = None) -> np.ndarray:
    """This process's indices for ``epoch``; the shards are equal in length (DDP needs the same
    number of steps on every rank), so up to world - 1 draws of an epoch are left out."""
    order = SAMPLERS.get(name)(labels, np.asarray(counts), np.random.default_rng([seed, epoch]), cfg or SamplerConfig())
    per_rank = len(order) // world
    return order[rank * per_rank:(rank + 1) * per_rank]
