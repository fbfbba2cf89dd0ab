"""An image-folder tree ``split/class/image`` (or a .tar/.tar.gz of one). Class names are the class
folder names, sorted, over all splits. A split folder holding images but no class folders is an
unlabeled split (label null). Anything else outside the layout is rejected, not skipped."""
from __future__ import annotations

import math
import tarfile
from typing import Iterator

from pipeline import fs
from pipeline.config import IngestConfig
from pipeline.sources import Plan, Source, SourceError, TaskContext, chunks, image_row, register, rejected_row
from pipeline.sources.cifar import ARCHIVE_SUFFIXES


def _archive_files(source: str) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """(member name, archive, member) of each regular file, in archive order."""
    with fs.open_input(source) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for m in tar:
            if m.isfile():
                yield m.name.removeprefix("./"), tar, m


def _strip_wrapper(paths: list[str]) -> str:
    """A single top folder around the whole tree (``name/train/cat/x.jpg``) is not part of the layout;
    it is recognised by every path sharing it and some path being one level too deep."""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1 and any(p.count("/") >= 3 for p in paths):
        return tops.pop() + "/"
    return ""


def layout(paths: list[str]) -> tuple[list[str], list[dict]]:
    """Class names and one entry per file: its id (path below the tree), split, class or a layout error."""
    prefix = _strip_wrapper(paths)
    rel = [p[len(prefix):] for p in paths]
    parts = [p.split("/") for p in rel]
    has_classes = {q[0] for q in parts if len(q) == 3}
    class_names = sorted({q[1] for q in parts if len(q) == 3})
    entries = []
    for path, q in zip(rel, parts):
        entry = {"id": path, "split": q[0] if len(q) > 1 else None, "cls": None, "error": None}
        if len(q) == 3:
            entry["cls"] = q[1]
        elif len(q) == 2 and q[0] in has_classes:
            entry["error"] = f"file directly in split folder {q[0]}/, which has class folders"
        elif len(q) != 2:
            entry["error"] = f"not at split/class/image depth ({len(q)} levels)"
        entries.append(entry)
    return class_names, entries


@register("imagefolder")
class ImageFolder(Source):
    def plan(self, cfg: IngestConfig, parallelism: int) -> Plan:
        if len(cfg.source) != 1:
            raise SourceError(f"imagefolder: expected exactly one --source (a folder or .tar.gz), got {cfg.source}")
        source = fs.normalize(cfg.source[0])
        if not fs.exists(source):
            raise SourceError(f"imagefolder: source {source} does not exist")
        archive = source.endswith(ARCHIVE_SUFFIXES)
        try:
            paths = [name for name, _, _ in _archive_files(source)] if archive else [p for p, _ in fs.list_files(source)]
        except (OSError, EOFError, tarfile.TarError) as e:
            raise SourceError(f"imagefolder: cannot list {source}: {type(e).__name__}: {e}") from None
        if not paths:
            raise SourceError(f"imagefolder: no files in {source}")
        class_names, entries = layout(paths)
        if not class_names:
            raise SourceError(f"imagefolder: no split/class/image files in {source}")
        for entry, path in zip(entries, paths):
            entry["path"] = path
        # An archive is read sequentially, so each task streams it and handles one contiguous range
        # of members: one task per core. Folder files are read independently, in chunks.
        size = math.ceil(len(entries) / max(1, parallelism)) if archive else cfg.files_per_task
        units = [{"source": source, "archive": archive, "entries": chunk} for chunk in chunks(entries, size)]
        return Plan(class_names, units, {"source": source, "files": len(paths)}, label_type="name",
                    expected_records=len(entries))

    def read(self, unit: dict, ctx: TaskContext):
        entries = unit["entries"]
        if unit["archive"]:
            wanted = {e["path"]: e for e in entries}
            reason, detail = "missing_file", "member not found when the archive was read again"
            try:
                for name, tar, member in _archive_files(unit["source"]):
                    if name in wanted:
                        entry = wanted.pop(name)
                        yield self._row(entry, f"{unit['source']}!{name}", lambda: tar.extractfile(member).read(), ctx)
                        if not wanted:
                            return
            except Exception as e:  # a corrupt archive: the members not read yet are rejected one by one
                reason, detail = "unreadable_source", f"archive read failed: {type(e).__name__}: {e}"
            for entry in wanted.values():
                yield rejected_row(f"{unit['source']}!{entry['path']}", entry["split"], reason, detail, entry["cls"])
        else:
            for entry in entries:
                uri = fs.join(unit["source"], entry["path"])
                yield self._row(entry, uri, lambda: fs.read_bytes(uri), ctx)

    @staticmethod
    def _row(entry: dict, source: str, load, ctx: TaskContext) -> dict:
        try:
            data = load()
        except (OSError, tarfile.TarError) as e:
            return rejected_row(source, entry["split"], "missing_file", f"cannot read: {e}", entry["cls"])
        if entry["error"]:
            return rejected_row(source, entry["split"], "no_class_folder", entry["error"], None, data)
        return image_row(ctx, entry["id"], entry["split"], entry["cls"], source, encoded=data)
