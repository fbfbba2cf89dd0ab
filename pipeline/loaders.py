"""The training data of a run (``train_data``): the labeled split behind a loader, the in-memory one
(pipeline.data) or the petastorm one (pipeline.petastorm_loader), chosen by decoded size; the test
and validation splits; for a semi-supervised run the pseudo-labeled images its stream's policy kept;
for SSP the rotation task. It imports both loaders; neither imports it."""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple, Optional

import numpy as np
import torch

from pipeline import distributed, fs
from pipeline.config import ConfigError, TrainConfig, flatten
from pipeline.data import (ROTATIONS, ImageSet, MemoryLoader, concat, decoded_bytes, load_split, make_augment,
                           random_rotations, rotations, semi_loader)
from pipeline.longtail.profiles import ids_sha256
from pipeline.petastorm_loader import PetastormLoader
from pipeline.pseudolabel.store import selected_pseudo_labels
from pipeline.records import Manifest


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


class TrainData(NamedTuple):
    names: list[str]  # class names (rotations for SSP)
    counts: list[int]  # labeled images per class: the shot groups of the metrics
    loss_counts: list[int]  # the class counts the model trains on (labeled + pseudo-labeled)
    loader_kind: str
    loader: object  # a MemoryLoader, MixedLoader or PetastormLoader
    sample: ImageSet  # (part of) the training images: shape and statistics
    test: ImageSet
    val: Optional[ImageSet]
    semi: Optional[dict]  # what a semi-supervised run records about its pseudo-labels


def train_data(t: TrainConfig, manifest: Manifest, ctx: distributed.Context) -> TrainData:
    if manifest.train_settings and ctx.is_main:  # said, not silent: they shape the run (config.resolve's data layer)
        print(f"train settings of the data set (ingest.train_settings of {t.splits}): "
              + ", ".join(f"{k}={v}" for k, v in flatten(manifest.train_settings).items())
              + "; a --config file or --set overrides them", flush=True)
    if t.objective == "rotation":
        return _rotation_data(t, manifest, ctx)
    counts, names = manifest.labeled_counts, manifest.class_names
    labeled_dir = fs.join(t.splits, "labeled")
    kind = choose_loader(labeled_dir, t)
    loader, sample = make_loader(kind, labeled_dir, counts, t, ctx.rank, ctx.world, ctx.device,
                                 normalization=manifest.normalization)
    test = load_split(fs.join(t.splits, "test"))
    val = load_split(fs.join(t.splits, "val")) if manifest.totals.get("val") else None
    if not t.semi.pseudo_labels:
        return TrainData(names, counts, counts, kind, loader, sample, test, val, None)
    if kind != "memory":
        raise ConfigError("train.semi.pseudo_labels: semi-supervised training needs train.data.loader=memory")
    pseudo, semi = _pseudo_labeled(t, manifest, ctx)
    loader = semi_loader(loader.data, pseudo, counts, t, loader.augment, ctx.rank, ctx.world)
    loss_counts = [a + b for a, b in zip(counts, semi["pseudo_counts"])]  # what the model is trained on
    return TrainData(names, counts, loss_counts, kind, loader, sample, test, val, semi)


def _pseudo_labeled(t: TrainConfig, manifest: Manifest, ctx: distributed.Context) -> tuple[ImageSet, dict]:
    """The pseudo-labeled images the policy kept, and what the run records about them."""
    ids, labels, info = selected_pseudo_labels(t.semi.pseudo_labels)
    if info.class_names != manifest.class_names:
        raise ConfigError(f"train.semi.pseudo_labels: {t.semi.pseudo_labels} labels classes {info.class_names[:5]}..., "
                          f"the splits have {manifest.class_names[:5]}...")
    pool = load_split(info.input)
    rows, ids, labels = in_pool_order(ids, labels, pool.ids, info.input)
    pseudo = ImageSet(pool.images[rows], torch.from_numpy(labels), ids).to(ctx.device)
    pseudo_counts = np.bincount(labels, minlength=len(manifest.class_names)).tolist()
    return pseudo, {"pseudo_labels": fs.normalize(t.semi.pseudo_labels), "pseudolabel_run_id": info.run_id,
                    "base_run_id": info.model_run_id, "policy": info.policy, "pseudo_counts": pseudo_counts,
                    "pseudo_total": len(ids), "semi_batches": t.semi.batches, "round": info.round + 1,
                    "pseudo_ids_sha256": ids_sha256(ids)}


def in_pool_order(ids: list[str], labels: np.ndarray, pool_ids: list[str], pool: str
                  ) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """(rows of the pool, ids, labels) of the pseudo-labels, in the pool's row order: the stream's
    scoring order depends on how it cut micro-batches (files per trigger, a restart, files written in
    the same second), the training must not."""
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:  # the pool reached the stream twice (a file copied into its inbox again)
        raise ConfigError(f"train.semi.pseudo_labels: {len(repeated)} ids are pseudo-labelled more than once, e.g. "
                          f"{repeated[:3]}")
    where = {i: n for n, i in enumerate(pool_ids)}
    missing = [i for i in ids if i not in where]
    if missing:
        raise ConfigError(f"train.semi.pseudo_labels: {len(missing)} pseudo-labeled ids are not in {pool}, "
                          f"e.g. {missing[:3]}")
    rows = np.array([where[i] for i in ids], dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    return torch.from_numpy(rows[order]), [ids[k] for k in order], np.asarray(labels)[order]


def _rotation_data(t: TrainConfig, manifest: Manifest, ctx: distributed.Context) -> TrainData:
    """SSP data: the labeled split's images (and the pool's, if asked) without their labels; the
    test images rotated as in training (each once at a seeded random rotation, or all four), to
    measure rotation accuracy."""
    parts = ["labeled"] + (["unlabeled"] if t.ssp.unlabeled else [])
    images = concat([load_split(fs.join(t.splits, p)) for p in parts])
    unlabeled = ImageSet(images.images, torch.zeros(len(images), dtype=torch.int64), images.ids)
    loader, sample = make_loader("memory", None, [len(unlabeled)], t, ctx.rank, ctx.world, ctx.device,
                                 data=unlabeled, normalization=manifest.normalization)  # one pseudo-class
    test = load_split(fs.join(t.splits, "test"))
    if t.ssp.rotations == "random":
        x, y = random_rotations(test.images, torch.Generator().manual_seed(t.seed))
        test = ImageSet(x, y, test.ids)
    else:
        x, y = rotations(test.images)
        test = ImageSet(x, y, test.ids * len(ROTATIONS))
    counts = [len(unlabeled)] * len(ROTATIONS)  # every rotation is equally frequent
    return TrainData(list(ROTATIONS), counts, counts, "memory", loader, sample, test, None, None)
