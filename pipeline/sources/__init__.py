"""Data set readers, registered by name. Each source has two halves:

* ``plan(cfg, parallelism)`` runs on the driver: finds the inputs, the class names and cuts the work
  into JSON-able *units* (a batch file, a chunk of image paths, a range of archive members);
* ``read(unit, ctx)`` runs in Spark tasks and yields one row per input record: an image row, or a
  rejected row with its reason. Nothing is dropped, so input records == written + rejected.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Optional

import numpy as np

from pipeline.config import IngestConfig
from pipeline.errors import PipelineError
from pipeline.images import Rejected, check_shape, inspect_encoded
from pipeline.registry import Registry


class SourceError(PipelineError, RuntimeError):
    """The input as a whole is unusable (missing files, wrong layout): the job stops with this."""


@dataclass
class Plan:
    class_names: list[str]
    units: list[dict]
    info: dict = field(default_factory=dict)  # recorded in ingest.json (e.g. the digits split)
    label_type: str = "index"  # raw labels are class indices, or class names
    expected_records: Optional[int] = None  # input records, when known before reading (checked after)


@dataclass(frozen=True)
class TaskContext:
    """What every task needs to validate a record; small and picklable."""
    class_names: tuple[str, ...]
    size: Optional[tuple[int, int]]  # declared (height, width), or None
    channels: Optional[int]
    label_type: str = "index"
    max_record_bytes: int = 64 * 2**20  # ingest.max_record_mb: a larger record is rejected unread

    def label_index(self, raw) -> int:
        """The class index of a raw label, or Rejected naming what is wrong with it."""
        if self.label_type == "name":
            text = str(raw).strip()
            if not text:
                raise Rejected("bad_label", "empty label")
            if text not in self.class_names:
                raise Rejected("unknown_class", f"class {text!r} is not one of the {len(self.class_names)} classes")
            return self.class_names.index(text)
        try:
            value = int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        except (TypeError, ValueError):
            raise Rejected("bad_label", f"label {raw!r} is not an integer") from None
        if not 0 <= value < len(self.class_names):
            raise Rejected("bad_label", f"label {value} outside 0..{len(self.class_names) - 1}")
        return value


def image_row(ctx: TaskContext, id: str, split: str, label, source: str, *,
              pixels: Optional[np.ndarray] = None, encoded: Optional[bytes] = None) -> dict:
    """An accepted row, or a rejected one if the label or image fails validation.

    ``label`` is the raw label (None for unlabeled data); ``pixels`` a uint8 HxWxC array for array
    datasets, ``encoded`` the file bytes otherwise."""
    payload = encoded if pixels is None else pixels.tobytes()
    try:
        index = None if label is None else ctx.label_index(label)
        if pixels is not None:
            height, width, channels = pixels.shape
            fmt = "raw"
        else:
            fmt, height, width, channels = inspect_encoded(encoded)
        check_shape(height, width, channels, ctx.size, ctx.channels)
    except Rejected as r:
        return rejected_row(source, split, r.reason, r.detail, label, payload)
    return {"id": id, "split": split, "label": index, "image": payload, "image_format": fmt,
            "height": height, "width": width, "channels": channels, "source": source}


def rejected_row(source: str, split: Optional[str], reason: str, detail: str,
                 label_raw=None, payload: Optional[bytes] = None) -> dict:
    return {"source": source, "split": split, "label_raw": None if label_raw is None else str(label_raw),
            "reason": reason, "detail": detail, "image": payload}


def outside_root(root: str, path: str) -> Optional[str]:
    """Why ``path`` (relative to ``root``) may not be read, or None: it must be a relative path that
    stays under ``root`` once ``..`` and symbolic links are resolved (local roots), or has no ``..``
    (URI roots). Checked in the task, right before the read."""
    if "://" in path or path.startswith(("/", "\\", "file:")) or (len(path) > 1 and path[1] == ":"):
        return f"absolute path or URI {path!r}: manifest paths must be relative to the root {root}"
    if any(c in path for c in "?#\x00"):  # a query would reconfigure a URI root's file system (endpoint...)
        return f"{path!r} holds '?', '#' or a NUL byte"
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        return f"{path!r} climbs out with '..'"
    if "://" in root:
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, path))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return f"{path!r} resolves to {real}, outside the root {real_root} (a symbolic link)"
    return None


class Source:
    name: ClassVar[str]
    size: ClassVar[Optional[tuple[int, int]]] = None  # declared by the data set
    channels: ClassVar[Optional[int]] = None
    # the per-channel (mean, std) the reference code normalises this data set with, if it has one
    normalization: ClassVar[Optional[tuple[list[float], list[float]]]] = None

    def plan(self, cfg: IngestConfig, parallelism: int) -> Plan:
        raise NotImplementedError

    def read(self, unit: dict, ctx: TaskContext) -> Iterator[dict]:
        raise NotImplementedError


SOURCES: Registry[type[Source]] = Registry("dataset", SourceError)
_MODULES = ("digits", "cifar", "svhn", "imagefolder", "manifest")


def register(name: str) -> Callable[[type[Source]], type[Source]]:
    def wrap(cls: type[Source]) -> type[Source]:
        cls.name = name
        return SOURCES.register(name)(cls)
    return wrap


def load_sources() -> Registry[type[Source]]:
    """Every source module imported (each registers itself), and the registry."""
    for module in _MODULES:
        importlib.import_module(f"pipeline.sources.{module}")
    return SOURCES


def get_source(name: str) -> Source:
    return load_sources().get(name)()


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]
