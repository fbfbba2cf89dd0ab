"""The one place that builds a SparkSession. spark-submit's --master and --conf win; started as a
plain Python program, a job runs on local[*] bound to loopback."""
from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.config import SparkConfig


def under_spark_submit() -> bool:
    # spark-submit starts the Python driver with a running JVM gateway and tells it the port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session(cfg: SparkConfig):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers use this interpreter (and its packages)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    elif not under_spark_submit():
        builder = builder.master("local[*]")
    if not under_spark_submit():
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark picks a LAN address and warns
        builder = builder.config("spark.driver.memory", cfg.driver_memory)
    builder = (builder.config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.ui.showConsoleProgress", "false"))
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if not spark.sparkContext.master.startswith("local"):
        spark.sparkContext.addPyFile(project_zip())  # executors on other hosts import the library from it
    return spark


PACKAGES = ("pipeline", "models", "streaming")


def project_zip() -> str:
    """The project's packages in a zip for ``addPyFile`` (executors need them for tasks and UDFs)."""
    root = Path(__file__).resolve().parent.parent
    path = Path(tempfile.mkdtemp(prefix="longtail-lab-")) / "longtail_lab.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for file in sorted((root / package).rglob("*.py")):
                zf.write(file, file.relative_to(root).as_posix())
    return str(path)
