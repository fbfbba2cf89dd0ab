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


FINISHED = "FINISHED"  # beside a finished run's checkpoint in the state: no longer carried


def epoch_of(checkpoint: Path) -> int:
    """The last epoch a checkpoint holds (-1 if it cannot be read): what "newer" means here; file times
    do not survive git."""
    import torch

    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return -1


def sync_carry(run_dir: Path, carry: Path, restore: bool) -> None:
    """Copy each unfinished run's checkpoint between the state and the carry folder (same layout) where
    the other side's is missing or holds fewer epochs."""
    src, dst = (carry, run_dir) if restore else (run_dir, carry)
    for ckpt in src.glob("*/checkpoint.pt"):
        if not restore and (ckpt.parent / FINISHED).exists():
            continue
        target = dst / ckpt.parent.name / "checkpoint.pt"
        tmp = target.with_name("checkpoint.pt.tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, tmp)  # a copy first: the source may be replaced by the next epoch meanwhile
        if target.exists() and epoch_of(target) >= epoch_of(tmp):
            tmp.unlink()
            continue
        os.replace(tmp, target)
        if restore:
            print(f"carry: {ckpt} (epoch {epoch_of(target) + 1}) -> {target}", flush=True)


def progress(run_dir: Path, carry: Optional[Path]) -> list[str]:
    """One line per unfinished run, from the newer of its checkpoint in the state and in the carry
    folder: its name, the epochs done of its budget, the learning rate, the median epoch's seconds and
    the test top-1 at every evaluated epoch so far (what the docs say of a run still going)."""
    import math

    import torch

    copies: dict[str, list[Path]] = {}
    for ckpt in [*run_dir.glob("*/checkpoint.pt"), *(carry.glob("*/checkpoint.pt") if carry else [])]:
        if not (run_dir / ckpt.parent.name / FINISHED).exists():
            copies.setdefault(ckpt.parent.name, []).append(ckpt)
    lines = []
    for name, paths in sorted(copies.items()):
        ckpt = max(paths, key=epoch_of)  # the state's copy first: it wins a tie
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        history, epochs = state["history"], state["config"]["train"]["epochs"]
        seconds = sorted(h["epoch_seconds"] for h in history if "epoch_seconds" in h)
        evaluated = [(h["epoch"] + 1, h["test_top1"]) for h in history if not math.isnan(h["test_top1"])]
        lines.append(f"{name}: {state['epoch'] + 1} of {epochs} epochs, lr {history[-1]['lr']:g}, median epoch "
                     f"{seconds[len(seconds) // 2] if seconds else float('nan'):.0f} s; test top-1 at epochs "
                     + ", ".join(f"{e}: {100 * a:.1f}" for e, a in evaluated) + f" ({ckpt})")
    return lines


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
        raise SystemExit(f"{' '.join(argv[len(SUBMIT):len(SUBMIT) + 2])} ... failed with exit status {rc}")


def drop_carried(carry: Optional[Path], checkpoint: str) -> None:
    """A finished run needs no carried checkpoint once its record is written (and nothing downstream
    reads it): marked finished in the state, removed from the carry folder."""
    folder = Path(checkpoint).parent
    if folder.is_dir():
        (folder / FINISHED).touch()
    if carry and (carry / folder.name).is_dir():
        shutil.rmtree(carry / folder.name)


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
