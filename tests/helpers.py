"""Helpers the tests import: tiny inputs in every supported format, readers, the spark-submit
command line. (Fixtures live in conftest.py, which pytest loads itself.)"""
import io
import json
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


# --- tiny inputs in every supported format ---------------------------------------------------

def image_bytes(fmt="PNG", size=(8, 8), mode="RGB", seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 1)
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    im = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode if mode in ("L", "RGB", "RGBA") else None)
    if mode not in ("L", "RGB", "RGBA"):
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def cifar_batch(n, labels=None, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(x) for x in (labels if labels is not None else rng.integers(0, 10, n))],
             b"batch_label": b"testing batch"}
    return pickle.dumps(batch, protocol=2)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def write_cifar10(path: Path, per_batch=6, bad=None) -> Path:
    """A real-format cifar-10-python.tar.gz with ``per_batch`` images per batch. ``bad`` maps a batch
    name to replacement bytes (e.g. a malicious pickle)."""
    members = {"batches.meta": pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        members[name] = cifar_batch(per_batch, seed=i)
    members.update(bad or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_table(path: Path):
    """Read a Spark Parquet output with plain pyarrow, as a reader outside Spark would."""
    files = sorted(p for p in Path(path).glob("*.parquet"))
    return pq.ParquetDataset([str(f) for f in files]).read() if files else None


def ingest_report(out: Path) -> dict:
    return json.loads((out / "ingest.json").read_text())


SUBMIT = Path(sys.executable).parent / "spark-submit"


def submit_command(*args) -> tuple[list[str], dict]:
    """A spark-submit command line and environment, as a user runs the jobs (local[2], this venv)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    return [str(SUBMIT), "--master", "local[2]", "--driver-java-options",
            "-Dlog4j.configurationFile=conf/log4j2.properties", *map(str, args)], env


POOL_FILES = 6  # Parquet files in the stream tests' unlabeled pool


def manifest_record(**change) -> dict:
    """A valid manifest.json record (pipeline.records.Manifest) with ``change`` applied."""
    m = {"class_names": ["a", "b"], "num_classes": 2, "class_counts": {"labeled": [10, 1], "test": [5, 5]},
         "totals": {"labeled": 11, "test": 10}, "imbalance": {"ratio_measured": 10.0, "many_medium_few": {}},
         "params": {"imbalance_ratio": 10.0, "labeled_ids": None}, "source": {"data": "/d", "dataset": "digits"},
         "image_shapes": [{"height": 8, "width": 8, "channels": 1, "image_format": "raw", "count": 21}],
         "normalization": None, "ids_sha256": {"labeled": "x" * 64}, "manifest_sha256": "m" * 64,
         "git_commit": "abc", "created_at": "2026-12-07T00:00:00+00:00", "spark_version": "4.0.5", "duration_s": 1.5}
    return {**m, **change}
