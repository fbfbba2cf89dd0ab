"""Benchmarks longer than one sitting at the machine (a 200-epoch run is ~4.5 hours on a 2-core CPU):
the resumable state lives outside the work tree, every unfinished run's checkpoint can be carried in a
folder of the repository to the next machine, and each finished run's record lands in docs/ at once.

- ``state_root``: ``--state``, else ``$LONGTAIL_STATE``, else ``~/.cache/longtail-lab``;
- ``run_job``: one ``spark-submit jobs/...`` at a time, its checkpoints copied to the carry folder
  each minute while it runs (``sync_carry``), and restored from it when the state is gone;
- ``write_record`` / ``read_record``: a benchmark's record in docs/records/, typed (below), written
  aside then renamed (a kill never leaves half of one).

A record in docs/records/ is one flat JSON object: what the benchmark says of the run (``RunAbout`` for
bench/cifar10_lt.py, ``StageAbout`` for bench/study.py) beside the job's own ``--result`` record
(pipeline/records.py: ``TrainResult``, ``StreamResult``, ``Manifest``...). Both parts are checked when
it is written and read: a hand-edited or truncated record fails naming the file and the field."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, Optional, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.records import RESULTS, Record, RecordError, load_json  # noqa: E402

A = TypeVar("A", bound=Record)
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


@dataclasses.dataclass
class RunAbout(Record):
    """What bench/cifar10_lt.py says of a training beside its ``TrainResult``: the recipe, the images,
    the evaluation interval and the CPU it ran on."""
    FILE: ClassVar[str] = "<method>-s<seed>.json record"
    MAKE: ClassVar[str] = "bench/cifar10_lt.py"
    job: ClassVar[str] = "train"  # the job whose result the record holds
    method: str
    eval_every: int
    subset: str  # reference: the reference code's images; ours: this project's draw
    dataset: str
    cpu: str
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability()
    threads: int


@dataclasses.dataclass
class StageAbout(Record):
    """What bench/study.py says of one stage beside its job's result: the stage, the job, the study's
    budget, the stage's minutes and, for a stream, its kept pseudo-labels per class (the output's last
    balance: class_name, selected_count, precision), so a table needs only the records."""
    FILE: ClassVar[str] = "<stage>.json record"
    MAKE: ClassVar[str] = "bench/study.py"
    stage: str
    job: str  # of RESULTS: the result's record
    study_epochs: int
    minutes: float  # the sitting that ended the stage; NaN for a record written in a later sitting
    pseudo_labels: Optional[list[dict]] = None


def pct(v: Optional[float]) -> str:
    """A share as a percentage for the tables; '-' where there is none (NaN: no few-shot class on CIFAR-10-LT)."""
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def write_record(path: Path, about: Record, result: Record) -> None:
    """``about`` and the job's ``result`` as one flat JSON object in ``path``, whole or not at all, and
    only if it reads back as ``read_record`` will read it (every field kept, None too)."""
    own, theirs = ({k: v for k, v in dataclasses.asdict(r).items() if k != "version"} for r in (about, result))
    if set(own) & set(theirs):
        raise RecordError(f"{path}: {type(about).__name__} and {type(result).__name__} share the fields "
                          f"{sorted(set(own) & set(theirs))}")
    text = json.dumps({**own, **theirs}, indent=1, sort_keys=True) + "\n"
    _split(json.loads(text), type(about), f"{path} (being written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # the record lands whole, the moment its run ends


def read_record(path: Path, about: type[A]) -> tuple[A, Record]:
    """The record in ``path``, checked: (what the benchmark says, the job's result)."""
    return _split(load_json(path.read_text(), str(path), about.MAKE), about, str(path))


def _split(data, about: type[A], origin: str) -> tuple[A, Record]:
    if not isinstance(data, dict):
        raise RecordError(f"{origin}: not a record (a JSON object), found {type(data).__name__}")
    mine = {f.name for f in dataclasses.fields(about)} - {"version"}
    said = about.from_dict({k: v for k, v in data.items() if k in mine}, origin)
    if said.job not in RESULTS:
        raise RecordError(f"{origin}: field job: {said.job!r} is not a job with a result ({', '.join(RESULTS)})")
    return said, RESULTS[said.job].from_dict({k: v for k, v in data.items() if k not in mine}, origin)


def read_records(folder: Path, about: type[A]) -> list[tuple[A, Record]]:
    return [read_record(p, about) for p in sorted(folder.glob("*.json"))]


def same_record(path: Path, about: type[Record], config_sha256: Optional[str], manifest_sha256: Optional[str]) -> bool:
    """Whether ``path`` holds the record of a run with these settings on these data (a record that does
    not read fails, naming its field: it is never silently written over)."""
    if not path.exists():
        return False
    old = read_record(path, about)[1]
    return (getattr(old, "config_sha256", None), getattr(old, "manifest_sha256", None)) == (config_sha256, manifest_sha256)
