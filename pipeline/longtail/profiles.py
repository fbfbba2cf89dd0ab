"""Long-tail math: class-count profiles and seeded subsampling. Pure numpy, no Spark, no globals;
randomness only through an explicit ``numpy.random.Generator`` (or, to draw as older reference code
does, a ``numpy.random.RandomState``)."""
from __future__ import annotations

import hashlib
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.registry import Registry


class LongTailError(PipelineError, ValueError):
    """The requested split cannot be made from the data (the message names the class)."""


PROFILES: Registry[Callable[[int, int, float], list[int]]] = Registry("imbalance type", LongTailError)


@PROFILES.register("exp")
def _exp(n_max: int, num_classes: int, ratio: float) -> list[int]:
    # Cao et al. / Cui et al. / Yang & Xu: n_c = n_max * rho^(-c / (C - 1)), truncated.
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


@PROFILES.register("step")
def _step(n_max: int, num_classes: int, ratio: float) -> list[int]:
    # The first half of the classes keep n_max, the second half n_max / rho (one class: the head).
    head = max(1, num_classes // 2)
    return [int(n_max)] * head + [int(n_max / ratio)] * (num_classes - head)


@PROFILES.register("none")
def _none(n_max: int, num_classes: int, ratio: float) -> list[int]:
    return [int(n_max)] * num_classes


def class_counts(profile: str, n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images per class, class 0 the head. ``ratio`` < 0 reverses the order (tail first)."""
    counts = PROFILES.get(profile)(n_max, num_classes, abs(ratio))
    return counts[::-1] if ratio < 0 else counts


def subsample(ids_by_class: Sequence[Sequence[str]], labeled: Sequence[int], *, val_per_class: int = 0,
              unlabeled: Optional[Sequence[int]] = None, rng: np.random.Generator | np.random.RandomState,
              class_names: Optional[Sequence[str]] = None,
              fixed: Optional[Sequence[Sequence[str]]] = None) -> dict[str, list[list[str]]]:
    """Per class: sort the ids (input order never matters), shuffle with ``rng``, then take the first
    labeled[c] as labeled, the next val_per_class as val, and the next unlabeled[c] as the unlabeled
    pool (all the rest when ``unlabeled`` is None). The three are disjoint by construction, and the
    labeled set does not depend on the val/unlabeled settings. ``rng`` is used for nothing else, one
    ``permutation`` per class in class order.

    ``fixed`` gives the labeled ids of each class instead (a split list): they are taken as they are,
    ``labeled`` is ignored, and only the rest is shuffled for val and the pool.

    Returns {"labeled"|"val"|"unlabeled": [ids of class 0, ids of class 1, ...]}.
    """
    names = class_names or [str(c) for c in range(len(ids_by_class))]
    out: dict[str, list[list[str]]] = {"labeled": [], "val": [], "unlabeled": []}
    for c, ids in enumerate(ids_by_class):
        ids = sorted(ids)
        if fixed is None:
            shuffled, n = [ids[i] for i in rng.permutation(len(ids))], labeled[c]
        else:
            chosen = set(fixed[c])
            if len(chosen) != len(fixed[c]) or not chosen <= set(ids):
                raise LongTailError(f"class {c} ({names[c]}): the fixed labeled ids repeat, or are not all "
                                    f"among the class's {len(ids)} images")
            rest = [i for i in ids if i not in chosen]
            shuffled, n = sorted(chosen) + [rest[i] for i in rng.permutation(len(rest))], len(chosen)
        k = val_per_class
        m = len(ids) - n - k if unlabeled is None else unlabeled[c]
        if n + k + max(m, 0) > len(ids) or m < 0:
            want = f"labeled {n} + val {k}" + ("" if unlabeled is None else f" + unlabeled {m}")
            raise LongTailError(f"class {c} ({names[c]}) has {len(ids)} images, asked for {want}")
        out["labeled"].append(shuffled[:n])
        out["val"].append(shuffled[n:n + k])
        out["unlabeled"].append(shuffled[n + k:n + k + m])
    return out


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask holding out round(fraction * n_c) of each class (classes in sorted order)."""
    if not 0 <= fraction < 1:
        raise LongTailError(f"holdout fraction must be in [0, 1), got {fraction}")
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        mask[members[:int(round(fraction * len(members)))]] = True
    return mask


def ids_sha256(ids: Sequence[str]) -> str:
    """Order-free fingerprint of a set of ids (sha256 of the sorted ids, one per line)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()
