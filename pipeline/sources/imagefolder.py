"""An image-folder tree ``split/class/image`` (or a .tar/.tar.gz of one). Class names are the class
folder names, sorted, over all splits. A split folder holding images but no class folders is an
unlabeled split (label null). Anything else outside the layout is rejected, not skipped."""
from __future__ import annotations

import math
import tarfile
from typing import Iterator, Optional

from pipeline import fs
from pipeline.config import IngestConfig
from pipeline.sources import (Plan, Source, SourceError, TaskContext, chunks, image_row, outside_root, register,
                              rejected_row)
from pipeline.sources.cifar import ARCHIVE_SUFFIXES


def _archive_files(source: str) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """(member name, member) of each member but folders, in archive order: regular files and links
    (a link is rejected, never followed, and so still counted)."""
    with fs.open_input(source) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for m in tar:
            if not m.isdir():
                yield m.name.removeprefix("./"), m


def _listed(name: str, member: tarfile.TarInfo) -> list:
    """A member as the plan hands it to a task: [name, data offset, size, header checksum] for a
    regular file, else [name, None, why it is not read, None]. The task reads the bytes there without
    parsing the headers, after checking that the header before them has the listed checksum."""
    if member.isfile() and not member.issparse():
        return [name, member.offset_data, member.size, member.chksum]
    kind = ("symlink" if member.issym() else "hard link" if member.islnk() else "sparse file" if member.issparse()
            else member.type)
    return [name, None, f"a {kind} member (to {member.linkname!r}), not followed", None]


def _identity(source: str) -> list:
    """What says an archive is still the one the plan listed: its size and modification time."""
    info = fs.info(source)
    return [info.size, info.mtime_ns]


def wrapper_prefix(paths: list[str]) -> str:
    """A single top folder around the whole tree (``name/train/cat/x.jpg``) is not part of the layout;
    it is recognised by every path sharing it and most paths being one level too deep (so one stray
    nested file does not change how the whole tree is read)."""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1 and sum(p.count("/") >= 3 for p in paths) * 2 > len(paths):
        return tops.pop() + "/"
    return ""


def place(path: str, prefix: str, labeled_splits: set[str]) -> tuple[str, Optional[str], Optional[str], Optional[str]]:
    """(id, split, class, layout error) of one file: the id is its path below the tree."""
    rel = path[len(prefix):]
    q = rel.split("/")
    if len(q) == 3:
        return rel, q[0], q[1], None
    if len(q) == 2 and q[0] not in labeled_splits:
        return rel, q[0], None, None  # an unlabeled split
    if len(q) == 2:
        return rel, q[0], None, f"file directly in split folder {q[0]}/, which has class folders"
    return rel, q[0] if len(q) > 1 else None, None, f"not at split/class/image depth ({len(q)} levels)"


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
            identity = _identity(source) if archive else None
            members = [_listed(name, m) for name, m in _archive_files(source)] if archive else []
            paths = [m[0] for m in members] if archive else [p for p, _ in fs.list_files(source)]
        except (OSError, EOFError, tarfile.TarError) as e:
            raise SourceError(f"imagefolder: cannot list {source}: {type(e).__name__}: {e}") from None
        inside = paths if archive else [p for p in paths if not outside_root(source, p)]  # links out: not layout
        prefix = wrapper_prefix(inside)
        parts = [p[len(prefix):].split("/") for p in inside]
        class_names = sorted({q[1] for q in parts if len(q) == 3})
        if not class_names:
            raise SourceError(f"imagefolder: no split/class/image files in {source}")
        common = {"source": source, "archive": archive, "prefix": prefix,
                  "labeled_splits": sorted({q[0] for q in parts if len(q) == 3})}
        if archive:
            # An archive is read sequentially: each task streams it and reads one contiguous range of
            # its files (one task per core) at the offsets listed here, so no task parses the headers
            # again; the archive must be the one listed (size and mtime), else its files are rejected.
            size = math.ceil(len(paths) / max(1, parallelism))
            units = [{**common, "identity": identity, "start": a, "members": members[a:a + size]}
                     for a in range(0, len(paths), size)]
        else:
            units = [{**common, "paths": chunk} for chunk in chunks(paths, cfg.files_per_task)]
        return Plan(class_names, units, {"source": source, "files": len(paths), "wrapper": prefix or None},
                    label_type="name", expected_records=len(paths))

    def read(self, unit: dict, ctx: TaskContext):
        labeled = set(unit["labeled_splits"])
        if not unit["archive"]:
            for path in unit["paths"]:
                uri = fs.join(unit["source"], path)
                escape = outside_root(unit["source"], path)
                if escape:  # a symbolic link out of the tree: counted, not read
                    yield rejected_row(uri, None, "outside_root", escape)
                    continue
                yield self._row(place(path, unit["prefix"], labeled), uri, lambda: fs.read_bytes(uri), ctx)
            return
        members, start = unit["members"], unit["start"]
        reason, detail, done = "unreadable_source", "", 0
        try:
            with fs.open_input(unit["source"]) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
                if _identity(unit["source"]) != unit["identity"]:
                    raise SourceError(f"the archive changed since it was listed (size, mtime {unit['identity']} "
                                      f"-> {_identity(unit['source'])})")
                for name, offset, size, chksum in members:
                    if offset is None:  # a link or another member that is not a file: ``size`` says which
                        yield rejected_row(f"{unit['source']}!{name}", None, "link_member", size)
                    else:
                        yield self._row(place(name, unit["prefix"], labeled), f"{unit['source']}!{name}",
                                        lambda: _read_at(tar, name, offset, size, chksum), ctx)
                    done += 1
        except Exception as e:  # a corrupt or changed archive: the files not read yet are rejected one by one
            detail = f"archive read failed: {type(e).__name__}: {e}"
        for index, (name, *_) in enumerate(members[done:], start + done):
            yield rejected_row(f"{unit['source']}!{name}", None, reason, f"member #{index}: {detail}")

    @staticmethod
    def _row(placed: tuple, source: str, load, ctx: TaskContext) -> dict:
        image_id, split, cls, error = placed
        try:
            data = load()
        except (OSError, tarfile.TarError) as e:
            return rejected_row(source, split, "missing_file", f"cannot read: {e}", cls)
        if error:
            return rejected_row(source, split, "no_class_folder", error, None, data)
        return image_row(ctx, image_id, split, cls, source, encoded=data)


def _read_at(tar: tarfile.TarFile, name: str, offset: int, size: int, chksum: int) -> bytes:
    """The ``size`` bytes of member ``name`` at data offset ``offset``, once the header block just
    before them has the checksum the listing saw; else SourceError, and the unit's remaining members
    are rejected (members are read in archive order, so a compressed stream only moves forward)."""
    stream = tar.fileobj
    stream.seek(offset - tarfile.BLOCKSIZE)
    header = stream.read(tarfile.BLOCKSIZE)
    try:
        found = tarfile.nti(header[148:156])
    except tarfile.HeaderError:
        found = None
    if found != chksum:
        raise SourceError(f"{name}: the header before offset {offset} is not the listed member's (checksum "
                          f"{found}, listed {chksum}): the archive changed since it was listed")
    data = stream.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"{name}: {len(data)} of its {size} bytes (the archive ends early)")
    return data
