"""The JSON records between jobs have one typed definition (pipeline/records.py) that every reader
and writer goes through: a record that is truncated, old, hand-edited or newer fails naming the file
and the field, and no library module reads or writes one of those files by its name elsewhere."""
import json
import re
from pathlib import Path

import pytest

from pipeline.records import RESULTS, Ingest, Manifest, RecordError, Rounds, Stream, TrainResult
from tests.helpers import manifest_record as manifest

ROOT = Path(__file__).resolve().parent.parent


def write(folder: Path, data, name="manifest.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


def test_a_record_written_then_read_is_the_same_record_and_carries_its_version(tmp_path):
    record = Manifest.from_dict(manifest(), "test")
    record.write(str(tmp_path))
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == Manifest.VERSION
    assert Manifest.read(str(tmp_path)) == record
    assert record.dataset == "digits" and record.labeled_counts == [10, 1] and record.imbalance_ratio == 10.0


def test_a_file_from_before_the_version_field_reads_as_version_one(tmp_path):
    assert Manifest.read(str(write(tmp_path, manifest()))).version == 1


@pytest.mark.parametrize("data, message", [
    ('{"class_names": ["a", "b"], "num_cl', r"manifest.json: not valid JSON at line 1 .*truncated"),
    (manifest(manifest_sha256=None) | {}, r"manifest.json: field manifest_sha256: expected str, found NoneType"),
    ({k: v for k, v in manifest().items() if k != "ids_sha256"}, r"field 'ids_sha256' is missing .* older version"),
    (manifest(class_counts={"labeled": [10, "1"]}), r"field class_counts.labeled\[1\]: expected int, found str '1'"),
    (manifest(version=2), r"manifest.json version 2 is newer than this code reads \(1\)"),
    (manifest(extra=1), r"unknown field 'extra' in manifest.json"),
    ([1, 2], r"not a manifest.json record"),
])
def test_a_truncated_old_hand_edited_or_newer_record_fails_naming_the_file_and_field(tmp_path, data, message):
    with pytest.raises(RecordError, match=message) as raised:
        Manifest.read(str(write(tmp_path / "splits", data)))
    assert str(tmp_path / "splits" / "manifest.json") in str(raised.value)


def test_a_missing_record_says_which_job_makes_it(tmp_path):
    with pytest.raises(RecordError, match=r"has no stream.json: make it with jobs/pseudolabel.py"):
        Stream.read(str(tmp_path))


def test_a_bool_is_not_an_int_and_an_int_is_a_float():
    with pytest.raises(RecordError, match="num_classes: expected int, found bool"):
        Manifest.from_dict(manifest(num_classes=True), "m")
    assert Manifest.from_dict(manifest(duration_s=2), "m").duration_s == 2


def test_a_stream_record_written_before_scoring_precision_existed_was_fp32():
    old = {"model_uri": "runs:/r/model", "model_run_id": "r", "model_ref": "r", "model_version": None,
           "tracking_uri": "sqlite:///x", "policy": {"name": "all"}, "input": "/u", "input_ids_sha256": None,
           "truth": None, "checkpoint": "/c", "trigger": {}, "class_names": ["a"], "labeled_counts": [1],
           "splits_manifest_sha256": None, "round": 0, "base_run": {}, "bbse": None, "run_id": "s",
           "created_at": "t"}
    assert Stream.from_dict(old, "stream.json").scoring_precision == "fp32"


def test_a_rounds_record_is_kept_under_its_own_name(tmp_path):
    Rounds(config={"k": 1}, rounds=[{"round": 1, "run_id": "r"}]).write(str(tmp_path), name="semi-rounds-abc.json")
    assert Rounds.read(str(tmp_path), "semi-rounds-abc.json").rounds == [{"round": 1, "run_id": "r"}]


def test_every_record_declares_a_file_and_how_to_make_it():
    for record in (Ingest, Manifest, Stream, Rounds, *RESULTS.values()):
        assert record.FILE.endswith(".json") and record.MAKE.startswith("jobs/")


def test_every_job_writes_its_result_as_the_record_named_for_it():
    """A job's --result FILE is checked against, and written as, its declared record."""
    jobs = {p.stem: p.read_text() for p in ROOT.glob("jobs/*.py") if "run_spark_job(" in p.read_text()}
    assert set(jobs) == set(RESULTS)
    for job, code in jobs.items():
        assert re.search(rf"args\.result, {RESULTS[job].__name__}\)", code), job


def test_a_job_whose_result_does_not_fit_its_record_fails_naming_the_field_and_keeps_it_aside(spark, tmp_path, capsys):
    from pipeline.cli import run_spark_job
    from pipeline.config import resolve

    good = TrainResult.from_dict(train_result(ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json"), "t").to_dict()
    out = tmp_path / "r.json"
    run_spark_job(resolve(), lambda s, c: good, str, str(out), TrainResult)
    same = json.dumps(TrainResult.read(str(tmp_path), "r.json").to_dict(), sort_keys=True)
    assert same == json.dumps(good, sort_keys=True)  # NaN included (no few-shot class)
    bad = {k: v for k, v in good.items() if k != "final_test_top1"}
    with pytest.raises(SystemExit):
        run_spark_job(resolve(), lambda s, c: bad, str, str(tmp_path / "bad.json"), TrainResult)
    assert "the job's result (TrainResult): field 'final_test_top1' is missing" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()
    assert json.loads((tmp_path / "bad.json.unchecked").read_text())["run_id"] == good["run_id"]  # the work is kept


def test_a_result_from_before_the_timing_and_step_fields_reads_as_an_untimed_fp32_run():
    old = {k: v for k, v in train_result(ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json").items()
           if k not in ("epochs_timed", "median_epoch_seconds", "step")}
    result = TrainResult.from_dict(old, "old.json")
    assert result.step["precision"] == "fp32" and result.epochs_timed == 0


def train_result(path: Path) -> dict:
    """The TrainResult fields of a published training record (the study adds its own beside them)."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k in TrainResult.__dataclass_fields__}
