"""The stream's checkpoint and the input files of a micro-batch: which output a checkpoint serves,
which files a micro-batch read (from Spark's file-source log, a private format pinned against the
pinned Spark by tests/test_pseudolabel.py) and which of them are not readable Parquet."""
from __future__ import annotations

import json
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq

from pipeline import fs
from streaming.score import StreamError


CHECKPOINT_OWNER = "_longtail_lab_output.json"  # in the checkpoint: the output it belongs to


def claim_checkpoint(checkpoint: str, out: str) -> None:
    """A checkpoint serves one output: reused for another, the query would skip every file the
    first stream consumed and the new output would silently lack them."""
    owner = fs.join(checkpoint, CHECKPOINT_OWNER)
    if fs.exists(owner):
        first = json.loads(fs.read_text(owner))["out"]
        if first != out:
            raise StreamError(f"checkpoint {checkpoint} belongs to the stream writing {first}; reusing it for {out} "
                              f"would skip every file that stream consumed: give a new --checkpoint")
    elif fs.exists(fs.join(checkpoint, "offsets")):
        raise StreamError(f"checkpoint {checkpoint} holds a query of unknown origin (no {CHECKPOINT_OWNER}): "
                          f"give a new --checkpoint")
    else:
        fs.write_json_atomic(owner, {"out": out})


def batch_files(checkpoint: str, batch_id: int) -> list[str]:
    """The input files of micro-batch ``batch_id`` (paths or URIs), from the file source's log in
    the checkpoint: ``sources/0/<batch>``, or a later ``<n>.compact`` that folds it in (a
    micro-batch DataFrame does not report them itself). Spark logs percent-encoded URIs."""
    root = fs.join(checkpoint, "sources", "0")
    if not fs.exists(root):
        return []
    logs = [str(batch_id)] + sorted((p for p, _ in fs.list_files(root)
                                     if p.endswith(".compact") and int(p.split(".")[0]) >= batch_id),
                                    key=lambda p: int(p.split(".")[0]))
    for name in logs:
        if not fs.exists(fs.join(root, name)):
            continue
        version, *lines = fs.read_text(fs.join(root, name)).splitlines()
        if version != "v1":  # Spark's private format: pinned by tests/test_pseudolabel.py against the pinned Spark
            raise StreamError(f"{fs.join(root, name)}: Spark's file-source log version {version!r} is not the one "
                              f"this reader reads v1 (written by pyspark 4.0); check batch_files against this Spark")
        entries = [json.loads(line) for line in lines if line.strip()]
        found = [e["path"] for e in entries if e.get("batchId", batch_id) == batch_id]
        if found:
            parsed = [urlparse(p) for p in found]
            return [unquote(u.path) if u.scheme == "file" else unquote(p) if not u.scheme else p
                    for u, p in zip(parsed, found)]
    return []


def unreadable_files(files: list[str]) -> tuple[list[dict], int]:
    """(rejected rows for the micro-batch's input files that are not readable Parquet, rows the
    readable ones hold by their footers)."""
    rows, expected = [], 0
    for file in files:
        try:
            fsys, path = fs.filesystem(file)
            with fsys.open_input_file(path) as f:
                expected += pq.read_metadata(f).num_rows
        except Exception as e:
            rows.append({"id": None, "source": fs.normalize(file), "reason": "unreadable_file",
                         "detail": f"{fs.normalize(file)}: {type(e).__name__}: {e}"})
    return rows, expected
