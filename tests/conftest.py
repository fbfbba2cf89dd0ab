"""Fixtures (a real MLflow store, a local[2] SparkSession, a trained base model) and the test tiers:
tests that start Spark (directly, through spark-submit or a fixture that does) are marked ``spark``,
the browser test ``browser``; ``make test-fast`` runs the rest."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from tests.helpers import POOL_FILES  # noqa: E402

SPARK_FIXTURES = {"spark", "base", "splits", "digits"}  # fixtures that start (or need) a SparkSession


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SPARK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.spark)


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
    sets = {"splits": root / "lt", "runtime.run_dir": root / "runs", "epochs": 8, "batch_size": 32,
            "data.augment": "none", "tracking.experiment": "tests-pl", "method": "ce"}
    result = fit(resolve([str(ROOT / "conf/methods/ce.yaml")], [(f"train.{k}", str(v)) for k, v in sets.items()]))
    return {"splits": root / "lt", "run_id": result["run_id"], "root": root}
