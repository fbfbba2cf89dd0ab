"""Writing the pseudo-label output (its format and readers: pipeline.pseudo_labels), once per
micro-batch and idempotently: a replayed batch replaces its own files."""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fs, schema
from pipeline.pseudo_labels import (  # noqa: F401  (the readers, for the stream's users)
    BALANCE, LABELS, PART, REJECTED, REJECTED_SCHEMA, STREAM, SUCCESS, OutputError, batch_dir, committed_batches,
    latest_balance, read_balance, read_labels, read_rejected, read_stream_info, selected_pseudo_labels)


def begin_labels(out: str, batch_id: int) -> None:
    """Before micro-batch ``batch_id`` is scored: remove what an earlier attempt of it left (its
    ``_SUCCESS`` first, so no reader takes the folder for complete meanwhile) and leave the folder
    empty. A kill from here until ``write_labels`` returns leaves it without ``_SUCCESS``: unread, and
    replaced by the replay."""
    folder = batch_dir(out, batch_id)
    fsys, path = fs.filesystem(folder)
    if fs.exists(fs.join(folder, SUCCESS)):
        fsys.delete_file(fs.filesystem(fs.join(folder, SUCCESS))[1])
    fs.delete_dir(folder)
    fsys.create_dir(path, recursive=True)


def write_labels(table: pa.Table, out: str, batch_id: int) -> None:
    """Write micro-batch ``batch_id``'s scored rows (schema.LABEL_COLUMNS) into the folder
    ``begin_labels`` emptied, then its ``_SUCCESS``. The rows come to the driver with the batch (about
    100 bytes an image, the image bytes stay behind): one Spark job per micro-batch instead of a
    cached frame written, queried and counted by three."""
    declared = schema.arrow_schema(schema.LABEL_COLUMNS)
    _write_whole(table.select(declared.names).cast(declared), batch_dir(out, batch_id), PART)
    fs.write_bytes(fs.join(batch_dir(out, batch_id), SUCCESS), b"")


def _write_whole(table: pa.Table, folder: str, name: str) -> None:
    """``folder/name`` written beside (``.name.<random>.tmp``), then renamed into place: a reader
    never opens a half-written file, and a replay replaces its own."""
    fsys, path = fs.filesystem(fs.join(folder, name))
    fsys.create_dir(fs.filesystem(folder)[1], recursive=True)
    tmp = fs.filesystem(fs.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp"))[1]
    pq.write_table(table, tmp, filesystem=fsys)
    fsys.move(tmp, path)


def write_balance(out: str, batch_id: int, table: pa.Table) -> None:
    """Write the balance of ``batch_id`` whole, then rename it into place (replacing a replay's)."""
    _write_whole(table, fs.join(out, BALANCE), f"batch-{batch_id:08d}.parquet")


def write_rejected(out: str, batch_id: int, rows: list[dict]) -> None:
    """The inputs of ``batch_id`` that could not be scored (unreadable files, undecodable images),
    with their reason: OUT/rejected/batch-N.parquet, written whole then renamed (a replay replaces it)."""
    table = pa.Table.from_pylist([{"batch_id": batch_id, **r} for r in rows], schema=REJECTED_SCHEMA)
    _write_whole(table, fs.join(out, REJECTED), f"batch-{batch_id:08d}.parquet")
