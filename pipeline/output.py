"""Writing a job's output directory so that readers never see a half-written or mixed result, and
no job ever deletes what it did not write: everything goes to a temporary sibling carrying this
project's marker file, which becomes the target by rename at the end.

* ``--overwrite`` replaces only a directory with the marker (an output of this project); anything
  else at the target is refused, whatever it holds.
* An output may not overlap its inputs (the same directory, one inside the other).
* The commit is a rename that cannot replace (a rename onto a non-empty directory fails): if another
  job created the target while this one ran, this one fails and keeps its result beside it; with
  ``--overwrite`` the marker is checked again at commit time.
On object stores a rename is a copy, so these guarantees hold on local disks and HDFS only."""
from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from typing import Iterator, Sequence

from pipeline import fs
from pipeline.errors import PipelineError

MARKER = "_LONGTAIL_LAB_OUTPUT"  # Spark and pyarrow skip names starting with "_"


class OutputExists(PipelineError, FileExistsError):
    pass


class OutputOverlap(PipelineError, ValueError):
    pass


def is_output(path: str) -> bool:
    return fs.exists(fs.join(path, MARKER))


def _inside(child: str, parent: str) -> bool:
    if "://" not in child and "://" not in parent:  # local: compare where they really are (.., symlinks)
        child, parent = os.path.realpath(child), os.path.realpath(parent)
    child, parent = child.rstrip("/") + "/", parent.rstrip("/") + "/"
    return child.startswith(parent)


def check_target(out: str, overwrite: bool, inputs: Sequence[str] = ()) -> None:
    """Fail before any work if ``out`` may not be written: it exists (without --overwrite), it is
    not this project's output (with --overwrite), or it overlaps one of ``inputs``."""
    target = fs.normalize(out).rstrip("/")
    for given in inputs:
        source = fs.normalize(given).split("!", 1)[0].rstrip("/")
        if _inside(target, source) or _inside(source, target):
            raise OutputOverlap(f"output {target} overlaps the input {source} (the same folder, or one inside "
                                f"the other): choose an output folder apart from the inputs")
    if not fs.exists(target):
        return
    if not overwrite:
        raise OutputExists(f"{target} already exists; pass --overwrite to replace it "
                           f"(the old output stays until the new one is complete)")
    if not is_output(target):
        raise OutputExists(f"{target} exists and is not an output of this project (no {MARKER} file): "
                           f"--overwrite replaces only this project's outputs; move or delete it yourself")


@contextlib.contextmanager
def staged(out: str, overwrite: bool, kind: str, inputs: Sequence[str] = ()) -> Iterator[str]:
    """Yield a temporary directory to write into; on success it becomes ``out``, on failure it is removed."""
    check_target(out, overwrite, inputs)
    out = fs.normalize(out).rstrip("/")
    tmp = f"{out}.__tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        fs.write_text(fs.join(tmp, MARKER), json.dumps({"kind": kind, "written_at": time.time()}) + "\n")
    except BaseException:
        fs.delete_dir(tmp)
        raise
    _commit(tmp, out, overwrite)


def _commit(tmp: str, out: str, overwrite: bool) -> None:
    if fs.exists(out):
        try:
            check_target(out, overwrite)  # again: another job may have written it since the start
        except OutputExists as e:
            raise OutputExists(f"{e}; it appeared while this job ran: the new output is kept at {tmp}") from None
        old = f"{out}.__old-{uuid.uuid4().hex[:8]}"
        fs.move(out, old)
        try:
            fs.move(tmp, out)
        except OSError:
            fs.move(old, out)  # something took the target between the two renames: put the old one back
            raise OutputExists(f"{out} was created by another job during the commit; the new output is "
                               f"kept at {tmp}") from None
        fs.delete_dir(old)
        return
    try:
        fs.move(tmp, out)  # fails if the target appeared meanwhile: a rename onto a non-empty directory
    except OSError as e:
        raise OutputExists(f"{out} was created by another job while this one ran ({e}); the new output is "
                           f"kept at {tmp}") from None
