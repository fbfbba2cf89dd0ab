"""Writing a job's output directory so that readers never see a half-written or mixed result:
everything goes to a temporary sibling, which replaces the target in one rename at the end."""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

from pipeline import fs
from pipeline.errors import PipelineError


class OutputExists(PipelineError, FileExistsError):
    pass


def check_target(out: str, overwrite: bool) -> None:
    """Fail before any work if ``out`` exists and may not be replaced."""
    if fs.exists(out) and not overwrite:
        raise OutputExists(f"{fs.normalize(out)} already exists; pass --overwrite to replace it "
                           f"(the old output stays until the new one is complete)")


@contextlib.contextmanager
def staged(out: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory to write into; on success it becomes ``out``, on failure it is removed."""
    check_target(out, overwrite)
    out = fs.normalize(out).rstrip("/")
    tmp = f"{out}.__tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
    except BaseException:
        fs.delete_dir(tmp)
        raise
    if fs.exists(out):
        old = f"{out}.__old-{uuid.uuid4().hex[:8]}"
        fs.move(out, old)
        fs.move(tmp, out)
        fs.delete_dir(old)
    else:
        fs.move(tmp, out)
