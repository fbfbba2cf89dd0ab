"""The pseudo-label output of jobs/pseudolabel.py, as a format: its layout, its writers and its
readers (plain pyarrow, no Spark). The stream writes it, training and the dashboard read it.

OUT/labels/batch_id=N/   the scored rows of micro-batch N (schema.LABEL_COLUMNS), part-00000.parquet,
                         replaced whole by a replay: a micro-batch replayed after a crash (Spark
                         re-reads the same input files, logged in the checkpoint's offsets before it
                         ran) empties its own directory first, so every id is there once. ``_SUCCESS``,
                         written last, marks a directory complete; ``read_labels`` reads only complete
                         ones, so a reader never sees the partial files a kill can leave until the
                         replay replaces them. (Outputs of earlier versions, written by Spark with
                         overwrite in the same layout, read the same.)
OUT/balance/batch-N.parquet  the class balance after micro-batch N (schema.BALANCE_COLUMNS), written
                         whole then renamed into place, keyed (and so replaced on replay) by N.
OUT/rejected/batch-N.parquet  inputs of micro-batch N that could not be scored, with the reason.
OUT/state/batch-N.npz    the stream's bounded state after micro-batch N (pipeline.pseudolabel.state),
                         written before the balance of N; the last two kept.
OUT/stream.json          the model, its run, the selection policy, the input: what the labels are.

Why ``foreachBatch`` and not the streaming file sink: one query writes both outputs from the same
scored micro-batch, so the labels, the balance and the MLflow step all carry Spark's batch id; the
file sink cannot tell its rows which batch wrote them. Exactly-once comes from the idempotent write
per batch id (measured in ../shared/notes/stack.md and by tests/test_pseudolabel.py with SIGKILL).
"""
from __future__ import annotations

import posixpath
import re
import uuid
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import fs, schema
from pipeline.errors import PipelineError
from pipeline.pseudolabel.policies import Policy
from pipeline.records import Stream

LABELS, BALANCE, STREAM, REJECTED = "labels", "balance", Stream.FILE, "rejected"
PART, SUCCESS = "part-00000.parquet", "_SUCCESS"  # a micro-batch's labels file; its folder's completion marker
REJECTED_SCHEMA = pa.schema([("batch_id", pa.int64()), ("id", pa.string()), ("source", pa.string()),
                             ("reason", pa.string()), ("detail", pa.string())])
_BATCH_DIR = re.compile(rf"^{schema.LABEL_BATCH}=(\d+)$")
_BALANCE_FILE = re.compile(r"^batch-(\d+)\.parquet$")


class OutputError(PipelineError):
    pass


def batch_dir(out: str, batch_id: int) -> str:
    return fs.join(out, LABELS, f"{schema.LABEL_BATCH}={batch_id}")


def committed_batches(out: str) -> dict[int, list[str]]:
    """{batch id: its Parquet files} for every complete micro-batch (its _SUCCESS written)."""
    root = fs.join(out, LABELS)
    if not fs.exists(root):
        return {}
    files: dict[int, list[str]] = {}
    complete: set[int] = set()
    for rel, _ in fs.list_files(root):
        parts = rel.split("/")
        match = _BATCH_DIR.match(parts[0]) if len(parts) == 2 else None
        if not match:
            continue  # Spark's _temporary attempts and anything else
        batch = int(match.group(1))
        if parts[1] == SUCCESS:
            complete.add(batch)
        elif parts[1].endswith(".parquet") and not parts[1].startswith(("_", ".")):
            files.setdefault(batch, []).append(fs.join(root, rel))
    return {b: sorted(files.get(b, [])) for b in sorted(complete)}


def read_labels(out: str, columns: Optional[list[str]] = None, only: Optional[int] = None,
                listing: Optional[dict[int, list[str]]] = None) -> pa.Table:
    """The committed pseudo-labels with their batch id, in scoring order (batch, then id): every
    micro-batch's, or batch ``only``'s. ``listing``: a ``committed_batches(out)`` already taken (a
    reader of many single batches lists the folders once)."""
    wanted = columns or schema.names(schema.LABEL_COLUMNS)
    names = wanted if "id" in wanted else ["id", *wanted]  # the id orders the rows
    arrow = schema.arrow_schema(schema.LABEL_COLUMNS)
    tables = []
    for batch, files in (committed_batches(out) if listing is None else listing).items():
        if only is not None and batch != only:
            continue
        for file in files:
            fsys, path = fs.filesystem(file)
            # cast to the declared types: Spark-written batches of earlier versions differ in names only
            # (list<element>, INT96 timestamps)
            t = pq.read_table(path, filesystem=fsys, columns=names).cast(pa.schema([arrow.field(n) for n in names]))
            tables.append(t.append_column(schema.LABEL_BATCH, pa.array(np.full(t.num_rows, batch, np.int64))))
    if not tables:
        empty = pa.schema([arrow.field(n) for n in wanted] + [pa.field(schema.LABEL_BATCH, pa.int64())])
        return empty.empty_table()
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.sort_by([(schema.LABEL_BATCH, "ascending"), ("id", "ascending")])
    return table.select([*wanted, schema.LABEL_BATCH])


def read_rejected(out: str) -> pa.Table:
    """Every micro-batch's rejected inputs (empty when none)."""
    root = fs.join(out, REJECTED)
    files = [fs.join(root, p) for p, _ in fs.list_files(root) if p.endswith(".parquet")] if fs.exists(root) else []
    tables = [pq.read_table(fs.filesystem(f)[1], filesystem=fs.filesystem(f)[0]) for f in files]
    return pa.concat_tables(tables) if tables else REJECTED_SCHEMA.empty_table()


def read_balance(out: str, cache: Optional[dict] = None) -> pa.Table:
    """Every micro-batch's balance rows, by batch then class; empty when nothing was scored yet.
    ``out`` is the pseudo-label output or its balance folder. With a ``cache`` (a dict kept between
    calls, as the dashboard's refresh does) only the files new or replaced since the last call are
    read."""
    root = out if fs.name(out) == BALANCE else fs.join(out, BALANCE)
    empty = schema.arrow_schema(schema.BALANCE_COLUMNS).empty_table()
    if not fs.exists(root):
        return empty
    fsys, root_path = fs.filesystem(root)
    infos = {posixpath.basename(i.path): i for i in fsys.get_file_info(pafs.FileSelector(root_path))
             if i.type == pafs.FileType.File and _BALANCE_FILE.match(posixpath.basename(i.path))}
    cache = {} if cache is None else cache
    for name in [n for n in cache if n not in infos]:
        del cache[name]
    for name, info in infos.items():
        if name in cache and cache[name][0] == (info.mtime_ns, info.size):
            continue
        try:
            cache[name] = ((info.mtime_ns, info.size), pq.read_table(info.path, filesystem=fsys))
        except (OSError, pa.ArrowInvalid) as e:
            raise OutputError(f"{fs.join(root, name)}: unreadable balance file: {e}") from None
    if not cache:
        return empty
    # an output written before a column was added lacks it: null there
    table = pa.concat_tables([cache[n][1] for n in sorted(cache)], promote_options="permissive")
    return table.sort_by([("batch_id", "ascending"), ("class_index", "ascending")])


def read_stream_info(out: str) -> Stream:
    """The output's record (stream.json: the model, the policy, the input), checked."""
    if not fs.exists(fs.join(out, STREAM)):
        raise OutputError(f"{fs.normalize(out)} is not a pseudo-label output (no {STREAM}); "
                          f"make one with jobs/pseudolabel.py")
    return Stream.read(out)


def latest_balance(out: str) -> Optional[pa.Table]:
    """The balance after the last committed micro-batch, or None."""
    table = read_balance(out)
    if table.num_rows == 0:
        return None
    last = pc.max(table["batch_id"]).as_py()
    return table.filter(pc.equal(table["batch_id"], last))


def selected_pseudo_labels(out: str) -> tuple[list[str], np.ndarray, Stream]:
    """(ids, pseudo-labels, stream info) of the committed predictions the output's own policy keeps,
    in scoring order, recomputed from every label: exactly what the stream's balance counted as
    selected where that balance is exact (its ``exact`` column), its estimate's truth beyond."""
    info = read_stream_info(out)
    policy = Policy.from_params(info.policy)
    corrected = policy.adjust != "none"  # the prior correction needs the probability vectors
    table = read_labels(out, columns=["id", "predicted", "confidence"] + (["probs"] if corrected else []))
    if table.num_rows == 0:
        raise OutputError(f"{fs.normalize(out)}: no committed pseudo-labels yet")
    if corrected:
        view = policy.view(probs_matrix(table))
        predicted, keep = view.predicted, view.keep
    else:
        predicted = table.column("predicted").to_numpy().astype(np.int64)
        keep = policy.select(predicted, table.column("confidence").to_numpy(), len(info.class_names))
    ids = table.column("id").to_pylist()
    return [i for i, k in zip(ids, keep) if k], predicted[keep], info


def probs_matrix(table: pa.Table) -> np.ndarray:
    """The ``probs`` column (one vector per row) as an N x C float32 matrix."""
    values = pc.list_flatten(table.column("probs")).to_numpy().astype(np.float32)
    return values.reshape(table.num_rows, -1) if table.num_rows else values.reshape(0, 0)


# The writers: once per micro-batch and idempotently, a replayed batch replaces its own files.

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
