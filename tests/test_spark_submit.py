"""The jobs as users run them: spark-submit, a config file from conf/, flags layered on top."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import submit_command

pytestmark = pytest.mark.spark  # every test here runs spark-submit

ROOT = Path(__file__).resolve().parent.parent


def submit(*args, timeout=300):
    command, env = submit_command(*args)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


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


UI_PROBE = '''
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
port = int(spark.sparkContext.uiWebUrl.rsplit(":", 1)[1])
listening = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.rsplit(":", 1)
        if state == "0A" and int(hex_port, 16) == port:
            listening.add(address)
import json
print("UI", json.dumps(sorted(listening)))
'''


def test_a_plain_spark_submit_binds_the_ui_to_loopback(tmp_path):
    """Without SPARK_LOCAL_IP (as a user types it), the venv's spark-env.sh keeps the UI off other interfaces."""
    probe = tmp_path / "probe.py"
    probe.write_text(UI_PROBE)
    command, env = submit_command(probe)
    env.pop("SPARK_LOCAL_IP")
    command = [c for c in command if c not in ("--driver-java-options", "-Dlog4j.configurationFile=conf/log4j2.properties")]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # and the console is quiet: the venv's log4j2.properties keeps Spark's INFO start-up lines out
    assert not [l for l in run.stderr.splitlines() if " INFO " in l], run.stderr[:2000]
    line = next(l for l in run.stdout.splitlines() if l.startswith("UI "))
    addresses = json.loads(line.split(" ", 1)[1])
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 or IPv4-mapped IPv6
    assert addresses and set(addresses) <= loopback, line  # not 00000000... (every interface)
