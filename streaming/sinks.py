"""Writing the pseudo-label output (its format and readers: pipeline.pseudo_labels), once per
micro-batch and idempotently: a replayed batch replaces its own files."""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fs
from pipeline.pseudo_labels import (  # noqa: F401  (the readers, for the stream's users)
    BALANCE, LABELS, REJECTED, REJECTED_SCHEMA, STREAM, OutputError, batch_dir, committed_batches, latest_balance,
    read_balance, read_labels, read_rejected, read_stream_info, selected_pseudo_labels)


def write_labels(scored, out: str, batch_id: int) -> None:
    """Write one micro-batch's scored rows (a Spark DataFrame), replacing any earlier attempt."""
    scored.write.mode("overwrite").parquet(fs.spark_path(batch_dir(out, batch_id)))


def write_balance(out: str, batch_id: int, table: pa.Table) -> None:
    """Write the balance of ``batch_id`` whole, then rename it into place (replacing a replay's)."""
    root = fs.join(out, BALANCE)
    fsys, path = fs.filesystem(fs.join(root, f"batch-{batch_id:08d}.parquet"))
    fsys.create_dir(fs.filesystem(root)[1], recursive=True)
    tmp = fs.filesystem(fs.join(root, f".batch-{batch_id:08d}.{uuid.uuid4().hex[:8]}.tmp"))[1]
    pq.write_table(table, tmp, filesystem=fsys)
    fsys.move(tmp, path)


def write_rejected(out: str, batch_id: int, rows: list[dict]) -> None:
    """The inputs of ``batch_id`` that could not be scored (unreadable files, undecodable images),
    with their reason: OUT/rejected/batch-N.parquet, written whole then renamed (a replay replaces it)."""
    root = fs.join(out, REJECTED)
    fsys, path = fs.filesystem(fs.join(root, f"batch-{batch_id:08d}.parquet"))
    fsys.create_dir(fs.filesystem(root)[1], recursive=True)
    tmp = fs.filesystem(fs.join(root, f".batch-{batch_id:08d}.{uuid.uuid4().hex[:8]}.tmp"))[1]
    table = pa.Table.from_pylist([{"batch_id": batch_id, **r} for r in rows], schema=REJECTED_SCHEMA)
    pq.write_table(table, tmp, filesystem=fsys)
    fsys.move(tmp, path)
