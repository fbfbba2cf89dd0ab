"""What the stream measures besides the pool, each a small Spark job of its own run once when the
stream starts: the hidden truth of a carved pool, the held-out labeled split BBSE calibrates on
(its soft confusion matrix), a reduced scoring precision checked against fp32 on test images, and
the identity of the pool (the sha256 of its ids from the splits' manifest)."""
from __future__ import annotations

import dataclasses
import posixpath
from typing import Optional

import numpy as np
from pyspark.sql import functions as F

from pipeline import fs, schema
from pipeline.data import read_table
from pipeline.pseudolabel.prior import confusion
from pipeline.records import Manifest
from streaming.checkpoint import unreadable_files
from streaming.score import ERROR, ScoringModel, StreamError, score


def truth_path(cfg) -> Optional[str]:
    if cfg.truth:
        if not fs.exists(cfg.truth):
            raise StreamError(f"pseudolabel.truth: {fs.normalize(cfg.truth)} does not exist")
        return fs.normalize(cfg.truth)
    sibling = fs.join(posixpath.dirname(fs.normalize(cfg.input).rstrip("/")), schema.TRUTH)
    return sibling if fs.exists(sibling) else None


def load_truth(path: Optional[str]) -> Optional[dict[str, int]]:
    if path is None:
        return None

    table = read_table(path, columns=["id", "label"])
    return dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))


def val_path(cfg) -> Optional[str]:
    """The held-out labeled split BBSE calibrates on: ``pseudolabel.val``, else the pool's sibling
    ``val`` split of jobs/longtail.py when it holds images (longtail.val_per_class > 0), else None."""
    if cfg.val:
        if not fs.exists(cfg.val):
            raise StreamError(f"pseudolabel.val: {fs.normalize(cfg.val)} does not exist")
        return fs.normalize(cfg.val)
    sibling = fs.join(posixpath.dirname(fs.normalize(cfg.input).rstrip("/")), "val")
    if not fs.exists(sibling):
        return None
    files = [fs.join(sibling, p) for p, _ in fs.list_files(sibling) if p.endswith(".parquet")]
    return sibling if unreadable_files(files)[1] > 0 else None  # jobs/longtail.py writes an empty one by default


def held_out_confusion(spark, model: ScoringModel, path: str, num_classes: int) -> dict:
    """BBSE's soft confusion matrix: the model's mean probabilities on the held-out labeled images
    of each class (pipeline.pseudolabel.prior.confusion), scored once when the stream starts."""


    images = spark.read.parquet(fs.spark_path(path))
    rows = (score(images, model).filter(F.col(ERROR).isNull()).join(images.select("id", "label"), "id")
            .select("id", "label", "probs").orderBy("id").collect())
    if not rows:
        raise StreamError(f"BBSE: no scorable labeled image in the held-out split {path}")
    try:
        c = confusion(np.array([r["probs"] for r in rows], dtype=np.float64), np.array([r["label"] for r in rows]),
                      num_classes)
    except ValueError as e:
        raise StreamError(f"BBSE on the held-out split {path}: {e}") from None
    return {"val": path, "val_rows": len(rows), "val_ids_sha256": input_identity(path),
            "confusion": c.tolist(), "condition": float(np.linalg.cond(c))}


def precision_check(spark, model: ScoringModel, input_dir: str, images: int) -> dict:
    """A reduced-precision scoring path against fp32 on the first ``images`` test images (by id) of
    the pool's splits: how often the two predict the same class, and each one's top-1."""


    test = fs.join(posixpath.dirname(fs.normalize(input_dir).rstrip("/")), "test")
    check = {"precision": model.precision}
    if not fs.exists(test):
        return {**check, "test": None, "why": "no test split beside the input: agreement with fp32 not checked"}
    rows = spark.read.parquet(fs.spark_path(test)).orderBy("id").limit(images).cache()
    try:
        def predicted(ref: ScoringModel) -> dict:
            return {r["id"]: r["predicted"] for r in score(rows, ref).filter(F.col(ERROR).isNull())
                    .select("id", "predicted").collect()}

        fast, exact = predicted(model), predicted(dataclasses.replace(model, precision="fp32"))
        labels = {r["id"]: r["label"] for r in rows.select("id", "label").collect()}
    finally:
        rows.unpersist()
    ids = sorted(set(fast) & set(exact))
    if not ids:
        raise StreamError(f"pseudolabel.precision={model.precision}: no scorable image in {test} to check it on")
    agree = float(np.mean([fast[i] == exact[i] for i in ids]))
    return {**check, "test": test, "images": len(ids), "agreement": agree,
            "top1": float(np.mean([fast[i] == labels[i] for i in ids])),
            "fp32_top1": float(np.mean([exact[i] == labels[i] for i in ids]))}


def input_identity(input_dir: str) -> Optional[str]:
    """The sha256 of the pool's ids when the input is a split of jobs/longtail.py (its manifest is
    beside it), else None (an inbox that grows)."""
    splits = posixpath.dirname(fs.normalize(input_dir).rstrip("/"))
    if not fs.exists(fs.join(splits, Manifest.FILE)):
        return None
    return Manifest.read(splits).ids_sha256.get(fs.name(input_dir))
