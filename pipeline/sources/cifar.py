"""CIFAR-10 / CIFAR-100, "python version": a .tar.gz or its extracted folder. Batches are pickles,
read with the restricted unpickler; one Spark task per batch."""
from __future__ import annotations

import pickle
import posixpath
import tarfile

import numpy as np

from pipeline import fs, safe_pickle
from pipeline.config import IngestConfig
from pipeline.sources import Plan, Source, SourceError, TaskContext, image_row, register
from pipeline.sources.download import torchvision_download

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class _Cifar(Source):
    size = (32, 32)
    channels = 3
    normalization = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])  # kaidic/LDAM-DRW, YyzHarry/imbalanced-semi-self
    folder: str  # the folder inside the archive
    batches: dict[str, str]  # batch file -> split
    meta: str  # file holding the class names
    names_key: bytes
    labels_key: bytes
    torchvision_name: str
    url_hint: str

    def _source(self, cfg: IngestConfig) -> str:
        if len(cfg.source) > 1:
            raise SourceError(f"{self.name}: expected one --source (archive or folder), got {cfg.source}")
        if cfg.source:
            return fs.normalize(cfg.source[0])
        return fs.join(torchvision_download(self.torchvision_name, cfg.download_dir, self.url_hint), self.folder)

    def _member_path(self, source: str, file: str) -> str:
        if source.endswith(ARCHIVE_SUFFIXES):
            return f"{self.folder}/{file}"
        folder = source if fs.exists(fs.join(source, self.meta)) else fs.join(source, self.folder)
        return fs.join(folder, file)

    def plan(self, cfg: IngestConfig, parallelism: int) -> Plan:
        source = self._source(cfg)
        if not fs.exists(source):
            raise SourceError(f"{self.name}: source {source} does not exist")
        if source.endswith(ARCHIVE_SUFFIXES):
            try:
                with fs.open_input(source) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
                    members = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
            except (OSError, EOFError, tarfile.TarError) as e:
                raise SourceError(f"{self.name}: cannot read archive {source}: {type(e).__name__}: {e}") from None
            missing = [b for b in [self.meta, *self.batches] if f"{self.folder}/{b}" not in members]
            if missing:
                raise SourceError(f"{self.name}: {source} lacks {', '.join(f'{self.folder}/{m}' for m in missing)}")
        else:
            missing = [b for b in [self.meta, *self.batches] if not fs.exists(self._member_path(source, b))]
            if missing:
                raise SourceError(f"{self.name}: {', '.join(missing)} not found in {source} "
                                  f"(expected the extracted {self.folder}/ folder or the folder above it)")
        meta_file = self._member_path(source, self.meta)
        try:
            meta = safe_pickle.loads(_read(source, meta_file), meta_file)
        except pickle.UnpicklingError as e:
            raise SourceError(f"{self.name}: {e}") from None
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.names_key]]
        units = [{"source": source, "member": self._member_path(source, b), "split": split}
                 for b, split in self.batches.items()]
        return Plan(class_names, units, {"source": source})

    def read(self, unit: dict, ctx: TaskContext):
        try:
            batch = safe_pickle.loads(_read(unit["source"], unit["member"]), unit["member"])
            data = _pixel_rows(batch[b"data"])
            labels = list(batch[self.labels_key])
            images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)  # planar RGB -> HWC
        except Exception as e:
            raise SourceError(f"{unit['member']}: {type(e).__name__}: {e}") from None
        if len(labels) != len(images):
            raise SourceError(f"{unit['member']}: {len(images)} images but {len(labels)} labels")
        stem = posixpath.basename(unit["member"])
        for i, (pixels, label) in enumerate(zip(images, labels)):
            yield image_row(ctx, f"{stem}/{i:05d}", unit["split"], label, f"{unit['member']}[{i}]",
                            pixels=np.ascontiguousarray(pixels))


ROW = 3 * 32 * 32  # one CIFAR image, planar RGB


def _pixel_rows(data) -> np.ndarray:
    """A batch's ``data`` as N x 3,072 uint8, from what CIFAR's batches hold (a uint8 array) or N rows of
    3,072 integers or bytes; anything else is refused before numpy converts it (a list that nests
    itself, 848 bytes pickled, would make numpy walk 2^depth elements)."""
    if isinstance(data, np.ndarray):
        if data.dtype == object or data.ndim != 2 or data.shape[1] != ROW:
            raise ValueError(f"data is an array of {data.dtype} {data.shape}, not N x {ROW} pixel values")
        return data.astype(np.uint8, copy=False)
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"data is a {type(data).__name__}, not N rows of {ROW} pixel values")
    for i, row in enumerate(data):
        if isinstance(row, (bytes, bytearray)) and len(row) == ROW:
            continue
        if not (isinstance(row, (list, tuple)) and len(row) == ROW and all(type(v) is int for v in row)):
            raise ValueError(f"data row {i} is a {type(row).__name__} of {len(row) if hasattr(row, '__len__') else '?'} "
                             f"items, not {ROW} integers")
    return np.array([np.frombuffer(r, np.uint8) if isinstance(r, (bytes, bytearray)) else r for r in data],
                    dtype=np.uint8).reshape(len(data), ROW)


def _read(source: str, member: str) -> bytes:
    """Bytes of a batch file: a path in a folder, or a member of the archive ``source``."""
    if not source.endswith(ARCHIVE_SUFFIXES):
        return fs.read_bytes(member)
    with fs.open_input(source) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for m in tar:
            if m.isfile() and m.name.removeprefix("./") == member:
                return tar.extractfile(m).read()
    raise SourceError(f"{member} not found in {source}")


@register("cifar10")
class Cifar10(_Cifar):
    folder = "cifar-10-batches-py"
    batches = {**{f"data_batch_{i}": "train" for i in range(1, 6)}, "test_batch": "test"}
    meta, names_key, labels_key = "batches.meta", b"label_names", b"labels"
    torchvision_name = "CIFAR10"
    url_hint = "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"


@register("cifar100")
class Cifar100(_Cifar):
    folder = "cifar-100-python"
    batches = {"train": "train", "test": "test"}
    meta, names_key, labels_key = "meta", b"fine_label_names", b"fine_labels"
    torchvision_name = "CIFAR100"
    url_hint = "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
