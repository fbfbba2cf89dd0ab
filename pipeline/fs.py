"""Paths and URIs for driver and tasks alike, through ``pyarrow.fs`` (local, s3://, hdfs://, gs://).

A bare path means the local file system and is made absolute; Spark gets it as ``file://...`` so a
cluster whose default file system is HDFS does not reinterpret it.
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Iterator

from pyarrow import fs as pafs


def _has_scheme(uri: str) -> bool:
    return "://" in uri or uri.startswith("file:")


def normalize(uri: str) -> str:
    """An absolute local path, or the URI unchanged."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif uri.startswith("file:"):
        uri = uri[len("file:"):]
    return uri if _has_scheme(uri) else os.path.abspath(os.path.expanduser(uri))


def spark_path(uri: str) -> str:
    uri = normalize(uri)
    return uri if _has_scheme(uri) else "file://" + uri


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    uri = normalize(uri)
    if _has_scheme(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def join(base: str, *parts: str) -> str:
    return posixpath.join(normalize(base), *parts) if _has_scheme(base) else os.path.join(normalize(base), *parts)


def name(uri: str) -> str:
    return posixpath.basename(normalize(uri).rstrip("/"))


def info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return info(uri).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def open_input(uri: str):
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def to_json(obj, indent: int = 0) -> str:
    """JSON with two-space indentation, but lists of plain values (class counts) on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + to_json(v, indent + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj)


def write_json(uri: str, obj) -> None:
    write_text(uri, to_json(obj) + "\n")


def write_json_atomic(uri: str, obj) -> None:
    """Write beside, then rename over: a reader (or a kill) never meets a half-written file."""
    tmp = f"{normalize(uri)}.{os.getpid()}-{id(obj):x}.tmp"
    write_json(tmp, obj)
    move(tmp, uri)


def list_files(uri: str) -> Iterator[tuple[str, int]]:
    """(path relative to ``uri`` with '/' separators, size in bytes) of every file below, sorted."""
    fs, root = filesystem(uri)
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [(posixpath.relpath(e.path, root).replace(os.sep, "/"), e.size)
             for e in entries if e.type == pafs.FileType.File]
    return iter(sorted(files))


def move(src: str, dst: str) -> None:
    """Rename; atomic on local disks and HDFS, a copy on object stores."""
    fs, src_path = filesystem(src)
    fs.move(src_path, filesystem(dst)[1])


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
