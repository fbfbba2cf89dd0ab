"""Benchmarks longer than one sitting at the machine (a 200-epoch run is ~4.5 hours on a 2-core CPU):
the resumable state lives outside the work tree, every unfinished run's checkpoint can be carried in a
folder of the repository to the next machine, and each finished run's record lands in docs/ at once.

- ``state_root``: ``--state``, else ``$LONGTAIL_STATE``, else ``~/.cache/longtail-lab``;
- ``run_job``: one ``spark-submit jobs/...`` at a time, its checkpoints copied to the carry folder
  each minute while it runs (``sync_carry``), and restored from it when the state is gone;
- ``write_record``: a record file written aside, then renamed (a kill never leaves half of one)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
SUBMIT = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--driver-memory", "4g",
          "--driver-java-options", "-Dlog4j.configurationFile=conf/log4j2.properties"]


def state_root(given: Optional[str]) -> Path:
    return Path(given or os.environ.get("LONGTAIL_STATE") or Path.home() / ".cache/longtail-lab").resolve()


def prepare_environment(state: Path) -> None:
    """Spark on loopback, the venv's Python on both sides, and the MLflow store inside the state."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        os.environ.setdefault(key, sys.executable)
    (state / "mlflow").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow' / 'mlflow.db'}")


def sync_carry(run_dir: Path, carry: Path, restore: bool) -> None:
    """Copy each run's checkpoint between the state and the carry folder (same layout), newest wins."""
    src, dst = (carry, run_dir) if restore else (run_dir, carry)
    for ckpt in src.glob("*/checkpoint.pt"):
        target = dst / ckpt.parent.name / "checkpoint.pt"
        if not target.exists() or target.stat().st_mtime < ckpt.stat().st_mtime:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name("checkpoint.pt.tmp")
            shutil.copy2(ckpt, tmp)
            os.replace(tmp, target)
            if restore:
                print(f"carry: {ckpt} -> {target}", flush=True)


def run_job(argv: list[str], run_dir: Path, carry: Optional[Path]) -> None:
    """Run ``argv`` (a spark-submit) in the repository; while it runs, carry its checkpoints each minute."""
    proc = subprocess.Popen(argv, cwd=ROOT)
    while True:
        try:
            rc = proc.wait(timeout=60)
            break
        except subprocess.TimeoutExpired:
            if carry:
                sync_carry(run_dir, carry, restore=False)
    if carry:
        sync_carry(run_dir, carry, restore=False)
    if rc:
        raise SystemExit(f"{' '.join(argv[5:9])} ... failed with exit status {rc}")


def drop_carried(carry: Optional[Path], run_folder: str) -> None:
    """A finished run needs no carried checkpoint once its record is written (and nothing downstream reads it)."""
    if carry and run_folder and (carry / run_folder).is_dir():
        shutil.rmtree(carry / run_folder)


def same_record(path: Path, config_sha256: Optional[str], manifest_sha256: Optional[str]) -> bool:
    """Whether ``path`` holds the record of a run with these settings on these data."""
    if not path.exists():
        return False
    old = json.loads(path.read_text())
    return old.get("config_sha256") == config_sha256 and old.get("manifest_sha256") == manifest_sha256


def write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)  # the record lands whole, the moment its run ends
