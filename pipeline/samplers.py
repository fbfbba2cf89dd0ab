"""Which training examples an epoch visits, registered by name. A sampler is a pure function of
(labels, class counts, Generator) -> indices; every process draws the same epoch order from the
same seed and takes its own shard, so no distributed sampler object is needed."""
from __future__ import annotations

import numpy as np

from pipeline.registry import Registry

SAMPLERS: Registry = Registry("sampler")


@SAMPLERS.register("random")
def random_order(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every example once, shuffled."""
    return rng.permutation(len(labels))


@SAMPLERS.register("class_balanced")
def class_balanced(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Over-sampling with replacement, example weight 1 / n_y: every class is drawn equally often
    in expectation; an epoch has as many draws as there are examples."""
    weights = 1.0 / np.asarray(counts, dtype=np.float64)[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())


def epoch_indices(name: str, labels: np.ndarray, counts, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> np.ndarray:
    """This process's indices for ``epoch``; the shards are equal in length (DDP needs the same
    number of steps on every rank), so up to world - 1 draws of an epoch are left out."""
    order = SAMPLERS.get(name)(labels, np.asarray(counts), np.random.default_rng([seed, epoch]))
    per_rank = len(order) // world
    return order[rank * per_rank:(rank + 1) * per_rank]
