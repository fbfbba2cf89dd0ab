"""The Parquet schemas of the pipeline, declared once. Spark and Arrow schemas are derived from
these tuples; every reader and writer imports them from here.

Images are stored as the source had them, never re-encoded:
  * array datasets (digits, CIFAR, SVHN) as raw uint8 pixels in height x width x channels order
    (``image_format = "raw"``): they have no encoding to keep, and raw is what training decodes to;
  * file datasets (image folders, manifests) as the original encoded bytes (``"jpeg"``, ``"png"``...):
    re-encoding JPEG loses quality, and decoding to raw would multiply the size by ~10 for
    ImageNet-sized photos. ``pipeline.images.decode`` turns both into an array.
height/width/channels are measured at ingest (by decoding), so models and augmentations adapt.
"""
from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa


class Column(NamedTuple):
    name: str
    arrow: pa.DataType
    nullable: bool
    doc: str


IMAGE_COLUMNS: tuple[Column, ...] = (
    Column("id", pa.string(), False, "stable id: <dataset>/<split>/<index or relative path>"),
    Column("split", pa.string(), False, "split of the ingest (train, test, extra...) or of the long-tail splits"),
    Column("label", pa.int32(), True, "class index into class_names; null for unlabeled data"),
    Column("image", pa.binary(), False, "raw uint8 HWC pixels, or the original encoded file"),
    Column("image_format", pa.string(), False, "'raw' or the encoded format (jpeg, png, ...)"),
    Column("height", pa.int32(), False, "pixels"),
    Column("width", pa.int32(), False, "pixels"),
    Column("channels", pa.int32(), False, "1 grey, 3 RGB, 4 RGBA"),
    Column("source", pa.string(), False, "where the record came from: file URI, archive member or array index"),
)

REJECT_COLUMNS: tuple[Column, ...] = (
    Column("source", pa.string(), False, "file URI, archive member, manifest row or array index"),
    Column("split", pa.string(), True, "split the record would have gone to"),
    Column("label_raw", pa.string(), True, "the label as found in the input"),
    Column("reason", pa.string(), False, "one of REJECT_REASONS"),
    Column("detail", pa.string(), False, "human-readable explanation"),
    Column("payload", pa.binary(), True, "the record's bytes when there were any, so nothing is lost"),
)

# Rows produced by ingest tasks before they are split into accepted and rejected outputs:
# accepted rows have reason = null. Every image column is nullable here.
INGEST_TASK_COLUMNS: tuple[Column, ...] = tuple(
    c._replace(nullable=True) if c.name != "source" else c for c in IMAGE_COLUMNS
) + (
    Column("label_raw", pa.string(), True, ""),
    Column("reason", pa.string(), True, ""),
    Column("detail", pa.string(), True, ""),
)

# Why an input record was rejected. Kept short and stable: they are the keys of ingest.json.
REJECT_REASONS = {
    "empty_file": "zero-byte file",
    "not_an_image": "not decodable as an image",
    "truncated": "image data ends early",
    "bad_label": "label missing, unparseable or out of range",
    "unknown_class": "label names a class the data set does not have",
    "size_mismatch": "height/width differ from the declared size",
    "mode_mismatch": "channel count differs from the declared one",
    "unsupported_mode": "pixel mode other than grey, RGB or RGBA",
    "missing_file": "listed file does not exist or cannot be read",
    "unreadable_source": "a whole source file (archive, batch, .mat) could not be read",
    "no_class_folder": "file outside the split/class/image layout",
    "duplicate": "the same path listed twice in one split",
    "outside_root": "a path that leaves the data root (absolute, .., URI, symlink elsewhere); no bytes read",
    "link_member": "an archive member that is a symlink or hard link (not followed)",
    "unsupported_member": "an archive member that is neither a file nor a link (sparse, device, fifo); not read",
    "bad_name": "a member or file name that is not valid UTF-8 (shown with replacement characters)",
    "too_large": "a record larger than ingest.max_record_mb; not read",
}

# Pseudo-labels (jobs/pseudolabel.py, OUT/labels/batch_id=N/): every scored image once. The micro-batch
# id is the directory's partition value, so Spark readers get it as a column and no file repeats it.
LABEL_COLUMNS: tuple[Column, ...] = (
    Column("id", pa.string(), False, "the image's id in the unlabeled pool"),
    Column("predicted", pa.int32(), False, "argmax class index"),
    Column("confidence", pa.float32(), False, "softmax probability of the predicted class"),
    Column("probs", pa.list_(pa.float32()), False, "the full softmax vector, class order of class_names"),
    Column("model_run_id", pa.string(), False, "MLflow run of the scoring model"),
    Column("scored_at", pa.timestamp("us", tz="UTC"), False, "when the micro-batch was scored"),
)
LABEL_BATCH = "batch_id"  # partition column of OUT/labels

# The files of a jobs/longtail.py output beside its split folders.
INGESTED_IMAGES, INGEST_REJECTED = "images", "_rejected"  # the two tables of an ingest output
TRUTH = "unlabeled_truth"  # (id, label) of the unlabeled pool: for evaluating pseudo-labels only

# The class balance of the pseudo-labels (OUT/balance/batch-N.parquet): one row per class per micro-batch.
BALANCE_COLUMNS: tuple[Column, ...] = (
    Column("batch_id", pa.int64(), False, "streaming micro-batch"),
    Column("class_index", pa.int32(), False, ""),
    Column("class_name", pa.string(), False, ""),
    Column("batch_count", pa.int64(), False, "predictions of the class in this micro-batch"),
    Column("cumulative_count", pa.int64(), False, "predictions of the class up to this micro-batch"),
    Column("selected_count", pa.int64(), False, "cumulative pseudo-labels the selection policy keeps"),
    Column("adjusted_count", pa.int64(), True, "cumulative predictions of the class after the policy's prior correction"),
    Column("prior_em", pa.float64(), True, "the pool's class prior estimated by EM (Saerens et al. 2002) so far"),
    Column("prior_bbse", pa.float64(), True, "the pool's class prior estimated by BBSE (Lipton et al. 2018) so far"),
    Column("em_iterations", pa.int64(), True, "iterations EM took (the same on every row of a batch)"),
    Column("bbse_condition", pa.float64(), True, "condition number of BBSE's confusion matrix"),
    Column("batch_mean_confidence", pa.float64(), True, "mean confidence of this batch's predictions of the class"),
    Column("mean_confidence", pa.float64(), True, "cumulative mean confidence of the class's predictions"),
    Column("labeled_count", pa.int64(), False, "images of the class in the labeled split"),
    Column("true_count", pa.int64(), True, "hidden truth: scored images that belong to the class"),
    Column("precision", pa.float64(), True, "hidden truth: share of the kept pseudo-labels of the class that are right"),
    Column("recall", pa.float64(), True, "hidden truth: share of the scored images of the class kept with it"),
    Column("batch_rows", pa.int64(), False, "images in this micro-batch"),
    Column("cumulative_rows", pa.int64(), False, "images scored up to this micro-batch"),
    Column("rows_per_s", pa.float64(), False, "batch_rows / latency_s"),
    Column("latency_s", pa.float64(), False, "wall time of the micro-batch up to this row: read, decode, score, "
                                            "write the labels, update the state, compute the balance"),
    Column("committed_at", pa.timestamp("us", tz="UTC"), False, "when the balance row was written"),
    Column("exact", pa.bool_(), True, "the figures are the full recomputation; false: selected, adjusted, precision, "
                                      "recall and prior_em are estimates (pipeline.pseudolabel.state)"),
    Column("sample_rows", pa.int64(), True, "rows of the state's seeded sample the estimates came from; null: exact"),
)

CLASS_NAMES_KEY = "class_names"  # Spark column metadata on `label`, also in ingest.json / manifest.json


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow, nullable=c.nullable) for c in columns])


def spark_schema(columns: tuple[Column, ...]):
    from pyspark.sql import types as T

    to_spark = {pa.string(): T.StringType(), pa.int32(): T.IntegerType(), pa.int64(): T.LongType(),
                pa.binary(): T.BinaryType(), pa.float32(): T.FloatType(), pa.float64(): T.DoubleType(),
                pa.list_(pa.float32()): T.ArrayType(T.FloatType(), False),
                pa.timestamp("us", tz="UTC"): T.TimestampType()}
    return T.StructType([T.StructField(c.name, to_spark[c.arrow], c.nullable) for c in columns])


def names(columns: tuple[Column, ...]) -> list[str]:
    return [c.name for c in columns]
