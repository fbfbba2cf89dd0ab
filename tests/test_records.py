"""The JSON records between jobs have one typed definition (pipeline/records.py) that every reader
and writer goes through: a record that is truncated, old, hand-edited or newer fails naming the file
and the field, and no library module reads or writes one of those files by its name elsewhere."""
import json
import re
from pathlib import Path

import pytest

from pipeline.records import Ingest, Manifest, RecordError, Rounds, Stream
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
    for record in (Ingest, Manifest, Stream, Rounds):
        assert record.FILE.endswith(".json") and record.MAKE.startswith("jobs/")


def test_no_library_module_names_a_record_file_outside_its_definition():
    """Every reader and writer goes through pipeline/records.py: a string literal naming a record's
    file (outside docstrings and comments) anywhere else in the library is a reader on its own."""
    names = {r.FILE for r in (Ingest, Manifest, Stream, Rounds)}
    found = []
    for path in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("streaming/*.py"), *ROOT.glob("jobs/*.py")]:
        if path.name == "records.py":
            continue
        code = re.sub(r'""".*?"""', "", path.read_text(), flags=re.S)
        code = re.sub(r"#[^\n]*", "", code)
        found += [f"{path.relative_to(ROOT)}: {n}" for n in names if f'"{n}"' in code or f"'{n}'" in code]
    assert found == []
