"""Long-tailed splits from an ingest: ``SPLITS/{labeled,unlabeled,val,test}`` (Parquet, the image
schema), ``SPLITS/unlabeled_truth`` (id, label: the hidden labels of the pool, for evaluation only)
and ``SPLITS/manifest.json``. The selection itself is pipeline.longtail.profiles (pure, seeded); Spark only
moves the rows."""
from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import fs, schema
from pipeline.config import Config, ConfigError, LongTailConfig, to_dict
from pipeline.longtail.profiles import LongTailError, class_counts, ids_sha256, subsample
from pipeline.metrics import shot_groups
from pipeline.output import staged
from pipeline.provenance import stamp
from pipeline.records import Ingest, Manifest
from pipeline.tables import read_table

MANIFEST, TRUTH = Manifest.FILE, schema.TRUTH
CARVED = ("labeled", "val", "unlabeled")


# longtail.draw -> the seeded source of each class's shuffle (pipeline.longtail.profiles.subsample calls its
# ``permutation``; RandomState.permutation(n) is the shuffle of arange(n) the reference code does).
DRAWS = {"generator": np.random.default_rng, "imbalance_cifar": np.random.RandomState}


def plan_counts(available: list[int], cfg: LongTailConfig) -> tuple[list[int], list[int] | None]:
    """Labeled and unlabeled images per class. n_max defaults to the smallest class available, so
    ``none`` gives a balanced set; the pool takes every image left over unless M1 is given."""
    n_max = cfg.labeled_max if cfg.labeled_max is not None else min(available)
    labeled = class_counts(cfg.imbalance_type, n_max, len(available), cfg.imbalance_ratio)
    unlabeled = (None if cfg.unlabeled_max is None
                 else class_counts("exp", cfg.unlabeled_max, len(available), cfg.unlabeled_ratio))
    for key, ratio, head, counts in (("imbalance_ratio", cfg.imbalance_ratio, n_max, labeled),
                                     ("unlabeled_ratio", cfg.unlabeled_ratio, cfg.unlabeled_max, unlabeled)):
        if counts and head and min(counts) == 0:  # a ratio above the head count leaves the tail empty
            raise ConfigError(f"longtail.{key}={ratio:g} with a head class of {head} images gives "
                              f"{counts.count(0)} of {len(counts)} classes no image; it can be at most {head}")
    return labeled, unlabeled


def assign(images: DataFrame, cfg: LongTailConfig, class_names: list[str],
           listed: Optional[list[tuple[int, str, Optional[int]]]] = None) -> dict[str, list[list[str]]]:
    """Collect (id, label) of the source split to the driver and choose the ids of each split
    (``listed``: the entries of the split list ``cfg.labeled_ids``)."""
    ids_by_class: list[list[str]] = [[] for _ in class_names]
    rows = images.filter((F.col("split") == cfg.source_split) & F.col("label").isNotNull()).select("id", "label")
    table = rows.toArrow()  # one job, columnar (a Row iterator ran one job per partition)
    for image_id, label in zip(table.column("id").to_pylist(), table.column("label").to_pylist()):
        ids_by_class[label].append(image_id)
    if not any(ids_by_class):
        raise LongTailError(f"the ingest has no labeled images in split {cfg.source_split!r}")
    empty = [name for name, ids in zip(class_names, ids_by_class) if not ids]
    if empty and cfg.labeled_max is None and listed is None:  # n_max would be 0, every labeled count with it
        raise LongTailError(f"class {empty[0]!r} has no labeled images in split {cfg.source_split!r} "
                            f"({len(empty)} such classes), so the head count n_max (the smallest class) would be 0: "
                            f"give --labeled-max, or ingest without the empty class")
    labeled, unlabeled = plan_counts([len(ids) for ids in ids_by_class], cfg)
    fixed = None
    if listed is not None:
        label_of = {i: c for c, ids in enumerate(ids_by_class) for i in ids}
        fixed = fixed_labeled(cfg.labeled_ids, listed, label_of, class_names, cfg.source_split)
    return subsample(ids_by_class, labeled, val_per_class=cfg.val_per_class, unlabeled=unlabeled,
                     rng=DRAWS[cfg.draw](cfg.seed), class_names=class_names, fixed=fixed)


def read_split_list(uri: str, data: bytes, class_names: list[str]) -> list[tuple[int, str, Optional[int]]]:
    """The entries of the split list ``uri`` (its bytes ``data``): (line number, id, class or None) for
    each "ID [CLASS]" line. The class is a class name, else an index; blank lines and lines starting
    with ``#`` are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LongTailError(f"{uri}: a split list must be UTF-8 text ({e})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise LongTailError(f"{uri}:{number}: expected 'ID [CLASS]', got {len(fields)} fields: "
                                f"{line.strip()[:80]!r}")
        label = None
        if len(fields) == 2:
            if fields[1] in class_names:
                label = class_names.index(fields[1])
            elif re.fullmatch("[0-9]+", fields[1]) and int(fields[1]) < len(class_names):
                label = int(fields[1])
            else:
                raise LongTailError(f"{uri}:{number}: class {fields[1]!r} is neither a class name nor an "
                                    f"index below {len(class_names)}")
        entries.append((number, fields[0], label))
    if not entries:
        raise LongTailError(f"{uri}: the split list names no images")
    return entries


def list_bytes(uri: str) -> bytes:
    if not fs.exists(uri):
        raise LongTailError(f"longtail.labeled_ids: the split list {uri} does not exist")
    return fs.read_bytes(uri)


def _split_list(cfg: LongTailConfig, class_names: list[str]):
    """The split list's entries and sha256, from one read (what is parsed is what is fingerprinted)."""
    if cfg.labeled_ids is None:
        return None, None
    data = list_bytes(cfg.labeled_ids)
    return read_split_list(cfg.labeled_ids, data, class_names), hashlib.sha256(data).hexdigest()


def fixed_labeled(uri: str, entries: list[tuple[int, str, Optional[int]]], label_of: dict[str, int],
                  class_names: list[str], source_split: str) -> list[list[str]]:
    """The labeled ids of each class named by a split list; every id must be a labeled image of the
    source split, once, of the class the list gives (the message names the line)."""
    per_class: list[list[str]] = [[] for _ in class_names]
    seen: dict[str, int] = {}
    for number, image_id, label in entries:
        if image_id in seen:
            raise LongTailError(f"{uri}:{number}: {image_id!r} is listed twice (first on line {seen[image_id]})")
        seen[image_id] = number
        if image_id not in label_of:
            missing = sum(1 for _, i, _ in entries if i not in label_of)
            raise LongTailError(f"{uri}:{number}: {image_id!r} is not a labeled image of split {source_split!r} "
                                f"of the ingest ({missing} of the {len(entries)} listed ids are not)")
        if label is not None and label != label_of[image_id]:
            raise LongTailError(f"{uri}:{number}: {image_id!r} is listed as class {class_names[label]!r} but the "
                                f"ingest labels it {class_names[label_of[image_id]]!r}")
        per_class[label_of[image_id]].append(image_id)
    empty = [name for name, ids in zip(class_names, per_class) if not ids]
    if empty:
        raise LongTailError(f"{uri}: the split list has no image of class {empty[0]!r} ({len(empty)} such "
                            f"classes); every class needs labeled images")
    return per_class


def carve(spark: SparkSession, images: DataFrame, chosen: dict[str, list[list[str]]], split: str) -> DataFrame:
    """The rows of ``images`` whose ids were chosen for ``split``, relabelled as that split."""
    ids = spark.createDataFrame([(i,) for per_class in chosen[split] for i in per_class], "id string")
    rows = images.join(F.broadcast(ids), "id").withColumn("split", F.lit(split))
    if split == "unlabeled":  # the pool's labels are hidden; they live in SPLITS/unlabeled_truth
        rows = rows.withColumn("label", F.lit(None).cast("int"))
    return rows.select(*schema.names(schema.IMAGE_COLUMNS))


def _read_ingest(data: str) -> tuple[Ingest, str]:
    """The ingest's record and the sha256 of its file (the splits' provenance names the very ingest)."""
    if not fs.exists(fs.join(data, Ingest.FILE)):
        raise LongTailError(f"{fs.normalize(data)} is not an ingest output (no {Ingest.FILE}); make one with jobs/ingest.py")
    text = fs.read_text(fs.join(data, Ingest.FILE))
    return Ingest.parse(text, fs.normalize(fs.join(data, Ingest.FILE))), hashlib.sha256(text.encode()).hexdigest()


def run_longtail(spark: SparkSession, cfg: Config) -> dict:
    lcfg, started = cfg.longtail, time.time()
    ingest, ingest_sha256 = _read_ingest(lcfg.data)
    class_names = ingest.class_names
    images = spark.read.parquet(fs.spark_path(fs.join(lcfg.data, schema.INGESTED_IMAGES)))
    with staged(lcfg.out, lcfg.overwrite, "splits", inputs=[lcfg.data]) as tmp:
        listed, list_sha256 = _split_list(lcfg, class_names)
        chosen = assign(images, lcfg, class_names, listed)
        splits = {name: carve(spark, images, chosen, name) for name in CARVED}
        splits["test"] = images.filter(F.col("split") == lcfg.test_split) if lcfg.test_split else None
        counts, hashes = {}, {}
        files = lcfg.files_per_split or spark.sparkContext.defaultParallelism
        for name, rows in splits.items():
            if rows is None:
                continue
            # in id order across the files: the rows a training indexes into do not depend on how
            # Spark partitioned the ingest (its files, the cluster's size, maxPartitionBytes)
            rows = rows.repartitionByRange(files, "id").sortWithinPartitions("id")
            rows = rows.withMetadata("label", {schema.CLASS_NAMES_KEY: class_names})
            rows.write.parquet(fs.spark_path(fs.join(tmp, name)))
            counts[name], hashes[name] = _read_back(fs.join(tmp, name), len(class_names))
        truth = spark.createDataFrame([(i, c) for c, ids in enumerate(chosen["unlabeled"]) for i in ids],
                                      "id string, label int")
        truth.write.parquet(fs.spark_path(fs.join(tmp, TRUTH)))
        for name in CARVED:  # what was written is what was chosen
            expected = [len(ids) for ids in chosen[name]]
            if name != "unlabeled" and counts[name] != expected:
                raise LongTailError(f"{name}: wrote {counts[name]} per class, chose {expected}")
            if hashes[name] != ids_sha256([i for ids in chosen[name] for i in ids]):
                raise LongTailError(f"{name}: the written ids differ from the chosen ones")
        counts["unlabeled"] = [len(ids) for ids in chosen["unlabeled"]]  # hidden truth, for the record
        labeled = counts["labeled"]
        params = split_params(lcfg, list_sha256)
        manifest = Manifest(
            class_names=class_names,
            num_classes=len(class_names),
            class_counts=counts,
            totals={name: sum(c) for name, c in counts.items()},
            imbalance={"ratio_measured": max(labeled) / max(1, min(labeled)), "many_medium_few": _shot_groups(labeled)},
            params=params,
            source={"data": fs.normalize(lcfg.data), "dataset": ingest.dataset,
                    "ingest_sha256": ingest_sha256,
                    "ingest_created_at": ingest.created_at, "ingest_git_commit": ingest.git_commit},
            image_shapes=ingest.image_shapes,
            normalization=ingest.normalization,  # what trainings on these splits normalise with
            train_settings=ingest.train_settings,  # and start from (the data set's ingest.train_settings)
            ids_sha256=hashes,
            # One fingerprint of the split contents (not of where they were written), for the
            # provenance of every run trained on them.
            manifest_sha256=hashlib.sha256(json.dumps(
                {"class_names": class_names, "selection": selection(params), "ids_sha256": hashes},
                sort_keys=True).encode()).hexdigest(),
            **stamp(),
            duration_s=round(time.time() - started, 2),
        )
        manifest.write(tmp)
    return manifest.to_dict()


def selection(params: dict) -> dict:
    """The long-tail settings that decide which images a split holds (not where they are read or written)."""
    chosen = {k: v for k, v in params.items() if k not in ("data", "out", "overwrite", "labeled_ids")}
    if chosen.get("draw", "generator") == "generator":  # splits from before longtail.draw existed
        chosen.pop("draw", None)
    return chosen


def split_params(cfg: LongTailConfig, list_sha256: Optional[str] = None) -> dict:
    """The settings a manifest records; a split list enters by its content (``list_sha256``, read
    from the file when not given) as well as its path."""
    params = to_dict(cfg)
    if cfg.labeled_ids is not None:
        params["labeled_ids_sha256"] = list_sha256 or hashlib.sha256(list_bytes(cfg.labeled_ids)).hexdigest()
    return params


def _read_back(uri: str, num_classes: int) -> tuple[list[int], str]:
    """Per-class counts (unlabeled rows are counted by their hidden class elsewhere) and the ids' hash
    of what Spark wrote, read back with pyarrow (two columns; no Spark job)."""
    table = read_table(uri, columns=["id", "label"])
    labels = table.column("label").drop_null().to_numpy()
    per_class = np.bincount(labels, minlength=num_classes).tolist()  # all zeros for the pool (labels null)
    return per_class, ids_sha256(table.column("id").to_pylist())


def _shot_groups(labeled: list[int]) -> dict:
    """Class indices in the literature's many, medium and few shot groups (pipeline.metrics)."""

    return {group: [int(c) for c in classes] for group, classes in shot_groups(labeled).items()}


def summary(manifest: dict) -> str:
    names, counts = manifest["class_names"], manifest["class_counts"]
    width = max(6, *(len(n) for n in names))
    header = f"{'class':>{width}} " + " ".join(f"{s:>9}" for s in counts)
    lines = [header] + [f"{n:>{width}} " + " ".join(f"{counts[s][c]:>9}" for s in counts)
                        for c, n in enumerate(names)]
    lines.append(f"{'total':>{width}} " + " ".join(f"{manifest['totals'][s]:>9}" for s in counts))
    lines.append(f"imbalance ratio (labeled): {manifest['imbalance']['ratio_measured']:.1f}; "
                 f"manifest sha256 {manifest['manifest_sha256'][:12]}")
    return "\n".join(lines)
