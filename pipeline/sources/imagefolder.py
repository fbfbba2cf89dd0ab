"""An image-folder tree ``split/class/image`` (or a .tar/.tar.gz of one). Class names are the class
folder names, sorted, over all splits. A split folder holding images but no class folders is an
unlabeled split (label null). Anything else outside the layout is rejected, not skipped."""
from __future__ import annotations

import bz2
import gzip
import lzma
import math
import tarfile
from typing import Iterator, Optional

from pipeline import fs
from pipeline.config import IngestConfig
from pipeline.errors import shown
from pipeline.sources import (Plan, Source, SourceError, TaskContext, chunks, image_row, outside_root, register,
                              rejected_row)
from pipeline.sources.cifar import ARCHIVE_SUFFIXES


def _archive_files(source: str) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """(member name, member) of each member but folders, in archive order: regular files and links
    (a link is rejected, never followed, and so still counted). A header that would send the listing
    back or nowhere (a negative size, an offset that does not grow), or a listing that stops before the
    archive's end (a corrupt header mid-archive, an archive cut short), is a SourceError naming where."""
    with fs.open_input(source) as f:
        stream = _LastBlock(_decompressed(f))
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            last, count = -1, 0
            while (m := tar.next()) is not None:
                if m.size < 0 or m.offset <= last:
                    raise SourceError(f"member #{count} {shown(_printable(m.name))} at offset {m.offset}: declared "
                                      f"size {m.size} after a header at {last} (a corrupt header); the archive is not read")
                last, count = m.offset, count + 1
                if not m.isdir():
                    yield m.name.removeprefix("./"), m
            stopped = _unread_tail(tar, stream)
            if stopped:
                raise SourceError(f"the listing stopped after {count} members at offset {tar.offset}: {stopped}")


def _decompressed(f):
    """The tar stream inside ``f`` (gzip, bzip2, xz or none, by its magic bytes), read forward only."""
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f)
    return f


class _LastBlock:
    """A file object that remembers the last header-sized block read from it: the one tarfile gave up
    on when its listing ended (tarfile ends silently at a bad header after the first)."""

    def __init__(self, raw):
        self.raw, self.block, self.block_at = raw, None, -1

    def read(self, size=-1):
        at, data = self.raw.tell(), self.raw.read(size)
        if size == tarfile.BLOCKSIZE:
            self.block, self.block_at = data, at
        return data

    def seek(self, *args):
        return self.raw.seek(*args)

    def tell(self):
        return self.raw.tell()


def _unread_tail(tar: tarfile.TarFile, stream: _LastBlock) -> Optional[str]:
    """Why the listing did not reach the archive's end, or None: it must have ended at a zero block
    (the end-of-archive marker) with nothing but zeros (or the end) in the block after it."""
    block = stream.block if stream.block_at == tar.offset else b""
    if len(block) < tarfile.BLOCKSIZE:
        return f"the archive ends at offset {tar.offset + len(block)} without its end-of-archive blocks (cut short)"
    if block.strip(b"\0"):
        return f"the block at offset {tar.offset} is not a member header (a corrupt header)"
    if stream.read(tarfile.BLOCKSIZE).strip(b"\0"):
        return f"a single zero block at offset {tar.offset} with data after it (a zeroed member header)"
    return None


def _printable(name: str) -> str:
    """A member name as text that can be stored: tarfile keeps undecodable bytes as surrogates."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _listed(name: str, member: tarfile.TarInfo, max_bytes: int) -> list:
    """A member as the plan hands it to a task: [name, data offset, size, header checksum] for a
    regular file, else [name, None, why it is not read, the reject reason]. The task reads the bytes
    there without parsing the headers, after checking that the header before them has the listed checksum."""
    printable = _printable(name)
    if printable != name:
        return [printable, None, "the member name is not valid UTF-8", "bad_name"]
    if name.startswith("/") or any(part in ("..", ".") for part in name.split("/")):
        return [name, None, f"member path {shown(name)} leaves the archive's tree", "outside_root"]
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        return [name, None, f"a {kind} member (to {shown(member.linkname)}), not followed", "link_member"]
    if not member.isfile() or member.issparse():
        kind = "sparse file" if member.issparse() else f"type {member.type!r}"
        return [name, None, f"a {kind} member, not read", "unsupported_member"]
    if member.size > max_bytes:
        return [name, None, f"{member.size:,} bytes, over ingest.max_record_mb ({max_bytes / 2**20:g} MB)", "too_large"]
    return [name, member.offset_data, member.size, member.chksum]


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
        archive, cap = source.endswith(ARCHIVE_SUFFIXES), int(cfg.max_record_mb * 2**20)
        try:
            identity = _identity(source) if archive else None
            members = [_listed(name, m, cap) for name, m in _archive_files(source)] if archive else []
            listing = [] if archive else list(fs.list_files(source))
            paths = [m[0] for m in members] if archive else [p for p, _ in listing]
        except (OSError, EOFError, tarfile.TarError) as e:
            raise SourceError(f"imagefolder: cannot list {source}: {type(e).__name__}: {e}") from None
        except SourceError as e:
            raise SourceError(f"imagefolder: {source}: {e}") from None
        # what the layout is read from: not the paths that leave the tree (links out, .. members, bad names)
        inside = ([m[0] for m in members if m[3] not in ("outside_root", "bad_name")] if archive
                  else [p for p in paths if not outside_root(source, p)])
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
            too_large = {p: n for p, n in listing if n > cap}  # rejected by their size, never read
            units = [{**common, "paths": chunk, "too_large": {p: too_large[p] for p in chunk if p in too_large},
                      "cap": cap} for chunk in chunks(paths, cfg.files_per_task)]
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
                if path in unit["too_large"]:
                    yield rejected_row(uri, None, "too_large", f"{unit['too_large'][path]:,} bytes, over "
                                                               f"ingest.max_record_mb ({unit['cap'] / 2**20:g} MB)")
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
                    if offset is None:  # a member not read: ``size`` says why, ``chksum`` is the reason
                        yield rejected_row(f"{unit['source']}!{name}", None, chksum, size)
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
