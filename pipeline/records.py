"""The JSON records that pass between jobs, each declared once, as the Parquet columns are in
pipeline/schema.py: its file name, what writes it, what reads it, its fields with their types and
a version. Every writer builds the record's class and every reader goes through ``read`` (or
``from_dict`` for a copy logged to MLflow), so a record that is truncated (not JSON), lacks a field
(written before the field existed, or hand-edited), holds a value of the wrong type or comes from a
newer version fails with one RecordError naming the file and the field.

| record | file | written by | read by |
|---|---|---|---|
| ``Ingest`` | OUT/ingest.json | jobs/ingest.py | jobs/longtail.py, bench/ |
| ``Manifest`` | SPLITS/manifest.json (also a run's MLflow artifact) | jobs/longtail.py | the trainers, the stream, sweeps, reports |
| ``Stream`` | OUT/stream.json | jobs/pseudolabel.py | a restarted stream, the semi-supervised trainer, the dashboard |
| ``Rounds`` | run_dir/semi-rounds-<sha>.json | jobs/train_semi.py --rounds | the same command run again |
| ``TrainResult`` | the ``--result FILE`` of jobs/train.py, pretrain.py, train_semi.py | those jobs | bench/ studies, scripts chaining jobs |
| ``StreamResult`` | the ``--result FILE`` of jobs/pseudolabel.py | jobs/pseudolabel.py | bench/ studies |
| ``SweepResult`` | the ``--result FILE`` of jobs/sweep.py | jobs/sweep.py | bench/gpu_check.py |

A job's ``--result FILE`` is its record (``RESULTS`` names it per job): jobs/ingest.py writes its
``Ingest``, jobs/longtail.py its ``Manifest``. A job checks its result against the record before it
prints it, so a result that does not fit its definition fails in the job's own tests, not in the
study that reads it hours later.

Version 1 is the format these files had when the definitions were written; a file without a
``version`` field is version 1."""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar, Union

from pipeline import fs
from pipeline.errors import PipelineError, shown

R = TypeVar("R", bound="Record")


class RecordError(PipelineError, ValueError):
    pass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, where: str) -> None:
    """``value`` has the declared type ``tp`` (int, float, str, bool, dict, list, Any, Optional[X],
    list[X], dict[str, X]); else a RecordError naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if origin is Union:
        if value is None and type(None) in args:
            return
        return _check(value, next(a for a in args if a is not type(None)), where)
    expected = origin or tp
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else \
        isinstance(value, int) and not isinstance(value, bool) if expected is int else isinstance(value, expected)
    if not ok:
        raise RecordError(f"{where}: expected {_type_name(tp)}, found {type(value).__name__} {shown(value)}")
    if expected is list and args:
        for i, item in enumerate(value):
            _check(item, args[0], f"{where}[{i}]")
    if expected is dict and args:
        for key, item in value.items():
            _check(item, args[1], f"{where}.{key}")


def load_json(text: str, origin: str, make: str) -> Any:
    """The JSON value in ``text`` read from ``origin``; a RecordError names the file, line and column
    and says what remakes it (``make``) when the text is not JSON (truncated or hand-edited)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{origin}: not valid JSON at line {e.lineno} column {e.colno} "
                          f"(truncated or hand-edited?): make it anew with {make}") from None


@dataclasses.dataclass
class Record:
    FILE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    MAKE: ClassVar[str]  # what to run to make the record anew, for the errors

    @classmethod
    def from_dict(cls: type[R], data: Any, origin: str) -> R:
        """The record ``data`` read from ``origin`` (a path or an MLflow URI, for the errors)."""
        if not isinstance(data, dict):
            raise RecordError(f"{origin}: not a {cls.FILE} record (a JSON object), found {type(data).__name__}")
        version = data.get("version", 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise RecordError(f"{origin}: {cls.FILE} version {shown(version)} is newer than this code reads "
                              f"({cls.VERSION}): update the project")
        hints, fields = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RecordError(f"{origin}: unknown field {shown(unknown[0])} in {cls.FILE} (hand-edited, or written "
                              f"by another version?)")
        values = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise RecordError(f"{origin}: field {name!r} is missing from {cls.FILE} (written by an older "
                                      f"version, or hand-edited): make it anew with {cls.MAKE}")
                continue
            _check(data[name], hints[name], f"{origin}: field {name}")
            values[name] = data[name]
        return cls(**values)

    @classmethod
    def read(cls: type[R], folder: str, name: Optional[str] = None) -> R:
        """The record in ``folder`` (a path or URI; ``name`` for a record kept under another file
        name), checked: a RecordError names the file at fault."""
        path = fs.join(folder, name or cls.FILE)
        if not fs.exists(path):
            raise RecordError(f"{fs.normalize(folder)} has no {name or cls.FILE}: make it with {cls.MAKE}")
        return cls.parse(fs.read_text(path), fs.normalize(path))

    @classmethod
    def parse(cls: type[R], text: str, origin: str) -> R:
        """The record in the JSON ``text`` read from ``origin``."""
        return cls.from_dict(load_json(text, origin, cls.MAKE), origin)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "version": self.VERSION}

    def set_fields(self) -> dict:
        """The fields that hold a value (None left out), without the version: what a study's record
        copies beside its own (bench/)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "version"}

    def write(self, folder: str, atomic: bool = False, name: Optional[str] = None) -> None:
        (fs.write_json_atomic if atomic else fs.write_json)(fs.join(folder, name or self.FILE), self.to_dict())


@dataclasses.dataclass
class Ingest(Record):
    """What an ingest wrote: counts per split and class, rejects by reason, and where it came from."""
    FILE: ClassVar[str] = "ingest.json"
    MAKE: ClassVar[str] = "jobs/ingest.py"
    dataset: str
    sources: list
    class_names: list[str]
    num_classes: int
    declared: dict
    splits: dict[str, dict]
    image_shapes: list[dict]
    rejected: dict
    input_records: int
    planned_records: Optional[int]
    written: int
    plan: dict
    normalization: Optional[dict]
    config: dict
    git_commit: str
    created_at: str
    spark_version: str
    duration_s: float
    train_settings: dict = dataclasses.field(default_factory=dict)  # ingest.train_settings: what training needs
    version: int = 1


@dataclasses.dataclass
class Manifest(Record):
    """The long-tailed splits: class counts per split, the parameters that drew them, the ingest they
    came from and the sha256 of every split's ids (``manifest_sha256``: one over their contents)."""
    FILE: ClassVar[str] = "manifest.json"
    MAKE: ClassVar[str] = "jobs/longtail.py"
    class_names: list[str]
    num_classes: int
    class_counts: dict[str, list[int]]
    totals: dict[str, int]
    imbalance: dict
    params: dict
    source: dict
    image_shapes: list[dict]
    normalization: Optional[dict]
    ids_sha256: dict[str, str]
    manifest_sha256: str
    git_commit: str
    created_at: str
    spark_version: str
    duration_s: float
    train_settings: dict = dataclasses.field(default_factory=dict)  # the ingest's, the layer above the defaults
    version: int = 1

    @property
    def dataset(self) -> str:
        return self.source["dataset"]

    @property
    def labeled_counts(self) -> list[int]:
        return self.class_counts["labeled"]

    @property
    def imbalance_ratio(self) -> float:
        """The ratio a run is filed under: the asked one, or the measured one of a split list."""
        return self.imbalance["ratio_measured"] if self.params.get("labeled_ids") else self.params["imbalance_ratio"]


@dataclasses.dataclass
class Stream(Record):
    """A pseudo-label output's identity: the model that scored it, the policy, the input, the
    checkpoint and trigger (a restart with others is refused), and the state the policy needs."""
    FILE: ClassVar[str] = "stream.json"
    MAKE: ClassVar[str] = "jobs/pseudolabel.py"
    RESTART_KEYS: ClassVar[tuple] = ("model_run_id", "model_uri", "policy", "input", "input_ids_sha256", "checkpoint",
                                     "trigger", "scoring_precision", "state")
    model_uri: str
    model_run_id: str
    model_ref: str
    model_version: Optional[str]
    tracking_uri: str
    policy: dict
    input: str
    input_ids_sha256: Optional[str]
    truth: Optional[str]
    checkpoint: str
    trigger: dict
    class_names: list[str]
    labeled_counts: list[int]
    splits_manifest_sha256: Optional[str]
    round: int
    base_run: dict
    bbse: Optional[dict] = None
    scoring_precision: str = "fp32"  # outputs written before the setting existed were scored in fp32
    scoring_check: Optional[dict] = None
    state: Optional[dict] = None  # the bounded state's settings (sample, seed, bins); None: written before it existed
    run_id: Optional[str] = None
    created_at: Optional[str] = None
    git_commit: Optional[str] = None
    spark_version: Optional[str] = None
    version: int = 1


@dataclasses.dataclass
class Rounds(Record):
    """The finished steps of a semi-supervised training with self-training rounds, under the key of
    its settings and data, so the same command run again continues after the last one."""
    FILE: ClassVar[str] = "semi-rounds.json"  # kept as semi-rounds-<sha of the key>.json: ``name=``
    MAKE: ClassVar[str] = "jobs/train_semi.py --rounds"
    config: dict
    rounds: list[dict]
    version: int = 1


@dataclasses.dataclass
class TrainResult(Record):
    """What a training ends with: its MLflow run and model, the final epoch's test figures (the
    headline), the best evaluated epoch on test (for comparison with papers only), its minutes, and
    what it ran on and from (config, splits, commit, seed)."""
    FILE: ClassVar[str] = "result.json"  # written where --result says
    MAKE: ClassVar[str] = "jobs/train.py (or pretrain.py, train_semi.py) --result FILE"
    run_id: str
    final_test_top1: float
    final_test_top5: float
    final_test_many_accuracy: float
    final_test_medium_accuracy: float
    final_test_few_accuracy: float  # NaN where the split has no few-shot class
    final_test_balanced_accuracy: float
    final_test_macro_f1: float
    final_test_ece: float
    best_on_test_epoch_top1: float
    best_on_test_epoch: int
    epochs_evaluated: int
    train_minutes: float
    final_test_per_class_accuracy: list[float]  # by class index
    device: str
    config_sha256: str
    manifest_sha256: str
    git_commit: Optional[str]
    seed: int
    epochs: int
    checkpoint: str
    model_uri: str
    # results written before these fields existed (a resumed study reads them): untimed, fp32 steps
    epochs_timed: int = 0
    median_epoch_seconds: float = float("nan")
    step: dict = dataclasses.field(default_factory=lambda: {"precision": "fp32", "channels_last": False,
                                                            "compile": False})  # the training step
    registered_model: Optional[str] = None  # models:/<name>/<version> when train.tracking.register is set
    rounds: Optional[list[dict]] = None  # self-training rounds of train_semi.py --rounds, the last one's figures above
    version: int = 1


@dataclasses.dataclass
class StreamResult(Record):
    """What a pseudo-label stream ends with: its MLflow run and output, how many images it scored,
    rejected and kept, the kept labels' precision and the pool-prior estimates (when the truth is known)."""
    FILE: ClassVar[str] = "result.json"
    MAKE: ClassVar[str] = "jobs/pseudolabel.py --result FILE"
    run_id: Optional[str]
    out: str
    model_run_id: str
    policy: str
    batches: int
    scored: int
    scoring_precision: str = "fp32"  # results written before the setting existed were scored in fp32
    scoring_check: Optional[dict] = None  # bf16 scoring's agreement with fp32, when bf16 scored
    rejected: int = 0
    selected: Optional[int] = None  # None: no micro-batch yet
    selected_imbalance_ratio: Optional[float] = None
    precision: Optional[float] = None  # of the kept labels, when the pool's truth is given
    prior_em: Optional[list[float]] = None
    prior_bbse: Optional[list[float]] = None
    pl_prior_l1_em: Optional[float] = None  # L1 distance of the estimates from the pool's true prior
    pl_prior_l1_bbse: Optional[float] = None
    pl_prior_l1_labeled: Optional[float] = None
    version: int = 1


@dataclasses.dataclass
class SweepResult(Record):
    """What a sweep ends with: its parent MLflow run, which children finished, were skipped or
    failed (with the error's last line), every child's outcome and the comparison's files."""
    FILE: ClassVar[str] = "result.json"
    MAKE: ClassVar[str] = "jobs/sweep.py --result FILE"
    sweep: str
    experiment: str
    parent_run_id: str
    children: int
    finished: list[str]
    failed: dict[str, str]
    skipped: list[str]
    outcomes: list[dict]
    compare: dict
    version: int = 1


RESULTS: dict[str, type[Record]] = {"ingest": Ingest, "longtail": Manifest, "train": TrainResult,
                                     "pretrain": TrainResult, "train_semi": TrainResult, "pseudolabel": StreamResult,
                                     "sweep": SweepResult}  # each job's --result record, by the job's name


def read_result(job: str, path: str) -> Record:
    """The ``--result`` file of jobs/``job``.py at ``path``, checked against its record."""
    return RESULTS[job].read(str(Path(path).parent), Path(path).name)
