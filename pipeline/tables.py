"""Reading the Parquet outputs of the jobs (a split, an ingest's images) as Arrow tables, with
pyarrow alone: the driver-side read-backs use it without importing torch (pipeline.data)."""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fs
from pipeline.errors import PipelineError


class DataError(PipelineError):
    pass


def parquet_files(split_dir: str) -> list[str]:
    """The data files of a Spark Parquet output (Spark's _SUCCESS and .crc files left out)."""
    files = [fs.join(split_dir, p) for p, _ in fs.list_files(split_dir)
             if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(("_", "."))]
    if not files:
        raise DataError(f"{split_dir}: no Parquet files")
    return files


def read_table(split_dir: str, columns: Optional[list[str]] = None, max_rows: Optional[int] = None):
    """The split as one Arrow table (the first ``max_rows`` rows, reading no more files than needed)."""

    tables, rows = [], 0
    for file in parquet_files(split_dir):
        fsys, path = fs.filesystem(file)
        tables.append(pq.read_table(path, filesystem=fsys, columns=columns))
        rows += tables[-1].num_rows
        if max_rows is not None and rows >= max_rows:
            break
    table = pa.concat_tables(tables)
    return table if max_rows is None else table.slice(0, max_rows)
