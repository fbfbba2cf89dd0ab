"""The jobs as users run them: spark-submit, a config file from conf/, flags layered on top."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBMIT = Path(sys.executable).parent / "spark-submit"


def submit(*args, timeout=300):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([str(SUBMIT), "--master", "local[2]", "--driver-java-options",
                           "-Dlog4j.configurationFile=conf/log4j2.properties", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_ingest_then_longtail_under_spark_submit_with_a_config_file(tmp_path):
    conf = "conf/experiments/digits_lt10.yaml"
    ingest = submit("jobs/ingest.py", "--config", conf, "--out", tmp_path / "digits")
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert "1797 images written, 0 rejected" in ingest.stdout
    splits = submit("jobs/longtail.py", "--config", conf, "--data", tmp_path / "digits", "--out", tmp_path / "lt",
                    "--set", "longtail.seed=2")
    assert splits.returncode == 0, splits.stderr[-3000:]
    manifest = json.loads((tmp_path / "lt" / "manifest.json").read_text())
    assert manifest["class_counts"]["labeled"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]  # from the YAML
    assert manifest["class_counts"]["val"] == [5] * 10 and manifest["params"]["seed"] == 2  # YAML, then --set
    assert "imbalance ratio (labeled): 10.0" in splits.stdout


def test_a_config_error_under_spark_submit_names_the_key(tmp_path):
    run = submit("jobs/longtail.py", "--data", tmp_path, "--out", tmp_path / "x", "--set", "longtail.sede=1")
    # spark-submit passes the Python driver's stderr through its stdout
    assert run.returncode != 0 and "unknown config key 'longtail.sede'" in run.stdout + run.stderr
