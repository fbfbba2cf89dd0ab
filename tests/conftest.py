import io
import json
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """A real SQLite MLflow store per test session (TorchDistributor's processes inherit it)."""
    path = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path}/mlflow.db"
    yield os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="session")
def spark():
    from pipeline.config import SparkConfig
    from pipeline.spark import session

    s = session(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g",
                            conf={"spark.ui.enabled": "false"}))
    yield s
    s.stop()


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


@pytest.fixture(scope="session")
def base(spark, tmp_path_factory):
    """Long-tailed digits with a 600-image unlabeled pool in 6 files, and a base model trained on
    them: what the streaming and dashboard tests score."""
    from jobs import ingest as ingest_job, longtail as longtail_job
    from pipeline.config import resolve
    from pipeline.train import fit

    root = tmp_path_factory.mktemp("pseudolabel")
    ingest_job.main(["--dataset", "digits", "--out", str(root / "digits")])
    longtail_job.main(["--data", str(root / "digits"), "--out", str(root / "lt"), "--imbalance-ratio", "10",
                       "--labeled-max", "60", "--unlabeled-max", "60", "--set", f"longtail.files_per_split={POOL_FILES}"])
    sets = {"splits": root / "lt", "run_dir": root / "runs", "epochs": 8, "batch_size": 32, "augment": "none",
            "experiment": "tests-pl", "method": "ce"}
    result = fit(resolve([str(ROOT / "conf/methods/ce.yaml")], [(f"train.{k}", str(v)) for k, v in sets.items()]))
    return {"splits": root / "lt", "run_id": result["run_id"], "root": root}
