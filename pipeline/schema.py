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
}

CLASS_NAMES_KEY = "class_names"  # Spark column metadata on `label`, also in ingest.json / manifest.json


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow, nullable=c.nullable) for c in columns])


def spark_schema(columns: tuple[Column, ...]):
    from pyspark.sql import types as T

    to_spark = {pa.string(): T.StringType(), pa.int32(): T.IntegerType(), pa.binary(): T.BinaryType()}
    return T.StructType([T.StructField(c.name, to_spark[c.arrow], c.nullable) for c in columns])


def names(columns: tuple[Column, ...]) -> list[str]:
    return [c.name for c in columns]
