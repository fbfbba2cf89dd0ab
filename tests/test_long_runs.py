"""Runs longer than a sitting (bench/cifar10_lt.py): checkpoints carried between the state folder and
a carry folder, newest wins, and the records' table."""
import dataclasses
import datetime
import importlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_carry_restores_a_lost_state_and_never_goes_back_an_epoch(tmp_path):
    import torch

    sittings = bench("sittings")
    state, carry = tmp_path / "state", tmp_path / "carry"

    def save(folder, epoch):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": epoch, "model": {}}, folder / "checkpoint.pt")

    save(state / "run-a", 7)
    sittings.sync_carry(state, carry, restore=False)
    assert sittings.epoch_of(carry / "run-a" / "checkpoint.pt") == 7
    new_state = tmp_path / "new-machine"
    sittings.sync_carry(new_state, carry, restore=True)  # a new machine: the state is gone, the carry brings it back
    assert sittings.epoch_of(new_state / "run-a" / "checkpoint.pt") == 7
    save(state / "run-a", 9)
    os.utime(carry / "run-a" / "checkpoint.pt")  # a git checkout makes the carried copy the newer file...
    sittings.sync_carry(state, carry, restore=True)
    assert sittings.epoch_of(state / "run-a" / "checkpoint.pt") == 9  # ...but not the further run: nothing lost
    sittings.sync_carry(state, carry, restore=False)
    assert sittings.epoch_of(carry / "run-a" / "checkpoint.pt") == 9
    (state / "run-a" / sittings.FINISHED).touch()  # finished and dropped: never carried again
    sittings.drop_carried(carry, str(state / "run-a" / "checkpoint.pt"))
    sittings.sync_carry(state, carry, restore=False)
    assert not (carry / "run-a").exists() and (state / "run-a" / "checkpoint.pt").exists()
    assert not list(carry.rglob("*.tmp")) and not list(state.rglob("*.tmp"))


def test_table_rows_carry_final_top1_minutes_step_and_the_reference_figures(tmp_path):
    sittings, cifar10_lt = bench("sittings"), bench("cifar10_lt")
    _, published = sittings.read_record(ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json", sittings.RunAbout)
    result = dataclasses.replace(published, final_test_top1=0.6512, final_test_many_accuracy=0.9,
                                 final_test_medium_accuracy=0.5, best_on_test_epoch_top1=0.66, best_on_test_epoch=195,
                                 train_minutes=270.4, median_epoch_seconds=78.0)
    about = sittings.RunAbout(method="ce", eval_every=5, subset="reference", dataset="d", cpu="x86_64",
                              cpu_capability="AVX2", threads=2)
    sittings.write_record(tmp_path / "ce-s0.json", about, result)  # what the bench writes, read back as --table does
    row = cifar10_lt.table(sittings.read_records(tmp_path, sittings.RunAbout)).splitlines()[-1]
    assert row.startswith("| ce | 0 | 200 | 65.1 | 90.0 | 50.0 | - | 66.0 (epoch 195) | 270 (260) | fp32, cpu AVX2 |")
    assert "64.8 final" in row and "70.4" in row


def test_a_benchmark_record_that_does_not_read_fails_naming_the_file_and_field(tmp_path):
    sittings = bench("sittings")
    from pipeline.records import RecordError

    record = json.loads((ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json").read_text())
    for name, change, message in [("a.json", {"threads": "2"}, "field threads: expected int"),  # the bench's part
                                  ("b.json", {"final_test_top1": None}, "field final_test_top1: expected float"),  # the job's
                                  ("c.json", {"cpu_capability": None}, "field cpu_capability: expected str")]:
        (tmp_path / name).write_text(json.dumps({**record, **change}))
        with pytest.raises(RecordError, match=f"{name}: {message}"):
            sittings.read_record(tmp_path / name, sittings.RunAbout)
    (tmp_path / "d.json").write_text(json.dumps({k: v for k, v in record.items() if k != "method"}))
    with pytest.raises(RecordError, match="d.json: field 'method' is missing.*bench/cifar10_lt.py"):
        sittings.same_record(tmp_path / "d.json", sittings.RunAbout, "sha", "sha")  # never silently written over
    (tmp_path / "e.json").write_text(json.dumps(record)[:-20])
    with pytest.raises(RecordError, match="e.json: not valid JSON"):
        sittings.read_record(tmp_path / "e.json", sittings.RunAbout)


def test_the_study_table_comes_from_its_records_alone_with_each_semi_run_beside_its_pseudo_labels(tmp_path):
    sittings, study = bench("sittings"), bench("study")
    from pipeline.records import StreamResult

    _, trained = sittings.read_record(ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json", sittings.RunAbout)
    stream = StreamResult(run_id="s", out="o", model_run_id="m", policy="all", batches=3, scored=7440, selected=7000,
                          precision=0.8123)
    per_class = [{"class_name": f"c{i}", "selected_count": 700, "precision": 0.5 + i / 100} for i in range(10)]
    write = sittings.write_record
    write(tmp_path / "ssl-base.json", sittings.StageAbout(stage="ssl-base", job="train", study_epochs=200, minutes=70.2),
          dataclasses.replace(trained, final_test_top1=0.601, train_minutes=70.2))
    write(tmp_path / "ssl-pseudolabel-all.json", sittings.StageAbout(stage="ssl-pseudolabel-all", job="pseudolabel",
                                                                     study_epochs=200, minutes=3.0,
                                                                     pseudo_labels=per_class), stream)
    write(tmp_path / "ssl-semi-all-ssp.json", sittings.StageAbout(stage="ssl-semi-all-ssp", job="train_semi",
                                                                  study_epochs=200, minutes=60.0),  # its last sitting
          dataclasses.replace(trained, train_minutes=190.0))  # across its sittings
    text = study.table(sittings.read_records(tmp_path, sittings.StageAbout))
    rows = text.splitlines()
    assert rows[2].startswith("| ssl-base | `ce` base (labeled only) | 200 | 60.1 | 73.3 | 39.6 | - | 95.3 97.9 80.5 ")
    assert rows[2].endswith("| - | 70 |")  # the base model trained on no pseudo-labels
    assert rows[3].startswith("| ssl-semi-all-ssp | semi + SSP, policy `all` | 200 | 66.6 |")
    assert rows[3].endswith("| 7000, 81.2 | 190 |")  # the stream of its pool and policy
    assert rows[-1] == "| ssl-pseudolabel-all | 7000 | 81.2 | " + ", ".join(
        f"700 ({50 + i:.1f})" for i in range(10)) + " |"


def test_a_carried_stream_output_is_restored_instead_of_scored_again(tmp_path):
    study = bench("study")
    carry = tmp_path / "carry"

    def scored(stage, script, *args, keep=False):  # what the stream job leaves: its output and result
        out = Path(args[args.index("--out") + 1])
        (out / "labels").mkdir(parents=True)
        (out / "labels" / "part.parquet").write_bytes(b"labels of machine 1")
        (first.work / "results" / f"{stage}.json").write_text('{"selected": 7}')
        return {"selected": 7}

    first = study.Study(tmp_path / "machine-1", 1, carry=carry)
    first.job = scored
    first.stream("ssl-pseudolabel-all", SimpleNamespace(run_id="r1"), tmp_path / "pool", first.work / "pl", "all", {}, "e")
    second = study.Study(tmp_path / "machine-2", 1, carry=carry)  # another machine: no state, the same carry

    def never(*args, **kw):
        raise AssertionError("scored again")

    second.job = lambda stage, *a, **kw: (__import__("json").loads((second.work / "results" / f"{stage}.json").read_text())
                                          if (second.work / "results" / f"{stage}.json").exists() else never())
    assert second.stream("ssl-pseudolabel-all", SimpleNamespace(run_id="r2"), tmp_path / "pool", second.work / "pl", "all", {},
                         "e") == {"selected": 7}
    assert (second.work / "pl" / "labels" / "part.parquet").read_bytes() == b"labels of machine 1"


def test_progress_names_each_unfinished_run_from_its_newest_checkpoint_with_its_evaluated_epochs(tmp_path):
    import torch

    sittings = bench("sittings")
    state, carry = tmp_path / "state", tmp_path / "carry"
    nan = float("nan")

    def save(folder, epochs_done, total=200):
        folder.mkdir(parents=True, exist_ok=True)
        history = [{"epoch": e, "lr": 0.1, "epoch_seconds": 60.0 + e, "test_top1": 0.5 + e / 100 if e % 5 == 4 else nan}
                   for e in range(epochs_done)]
        torch.save({"epoch": epochs_done - 1, "history": history, "config": {"train": {"epochs": total}}},
                   folder / "checkpoint.pt")

    save(state / "run-a", 10)
    save(carry / "run-a", 12)  # the carried copy went further (another machine): it is the one reported
    save(state / "run-done", 200)
    (state / "run-done" / sittings.FINISHED).touch()
    lines = sittings.progress(state, carry)
    assert len(lines) == 1
    assert lines[0].startswith("run-a: 12 of 200 epochs, lr 0.1, median epoch 66 s; test top-1 at epochs 5: 54.0, "
                               "10: 59.0 (")
    assert str(carry / "run-a" / "checkpoint.pt") in lines[0]
    assert sittings.progress(tmp_path / "empty", None) == []


def test_every_published_benchmark_record_reads_whole():
    sittings = bench("sittings")
    about = {"cifar10-lt100-e": sittings.RunAbout, "study-cifar10-lt100-": sittings.StageAbout}
    paths = sorted(ROOT.glob("docs/records/*/*.json"))
    assert any("cifar10-lt100-e200" in str(p) for p in paths)
    for path in paths:
        kind = next(k for prefix, k in about.items() if path.parent.name.startswith(prefix))
        said, result = sittings.read_record(path, kind)
        if said.job == "train":
            assert 0 < result.final_test_top1 <= 1 and len(result.final_test_per_class_accuracy) == 10


def test_a_stream_stage_record_keeps_the_last_balance_per_class(tmp_path):
    import pyarrow as pa

    from pipeline import schema
    from pipeline.pseudolabel.store import write_balance
    from pipeline.records import StreamResult

    study = bench("study")
    names = [c.name for c in schema.BALANCE_COLUMNS]

    def balance(batch, kept):
        rows = [{n: None for n in names} | {"batch_id": batch, "class_index": i, "class_name": f"c{i}", "batch_count": 5,
                                            "cumulative_count": 5 * (batch + 1), "selected_count": k,
                                            "precision": 0.9 - i / 10, "labeled_count": 10, "batch_rows": 10,
                                            "cumulative_rows": 10 * (batch + 1), "rows_per_s": 1.0, "latency_s": 1.0,
                                            "committed_at": datetime.datetime.now(datetime.timezone.utc)}
                for i, k in enumerate(kept)]
        return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.BALANCE_COLUMNS))

    out = str(tmp_path / "pl")
    write_balance(out, 0, balance(0, [3, 1]))
    write_balance(out, 1, balance(1, [8, 2]))  # the last micro-batch: cumulative counts
    result = StreamResult(run_id="s", out=out, model_run_id="m", policy="all", batches=2, scored=20, selected=10)
    about = study.stage_about("ssl-pseudolabel-all", "pseudolabel", 200, 2.5, result)
    assert about.pseudo_labels == [{"class_name": "c0", "selected_count": 8, "precision": 0.9},
                                   {"class_name": "c1", "selected_count": 2, "precision": 0.8}]
    bench("sittings").write_record(tmp_path / "r.json", about, result)
    assert bench("sittings").read_record(tmp_path / "r.json", type(about)) == (about, result)


def test_the_benchmarks_own_fields_never_meet_a_job_results():
    sittings = bench("sittings")
    from pipeline.records import RESULTS, TrainResult

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)} - {"version"}

    assert not names(sittings.RunAbout) & names(TrainResult)
    for job, result in RESULTS.items():
        assert not names(sittings.StageAbout) & names(result), job


def test_a_record_with_an_empty_value_reads_back_and_one_that_would_not_is_never_written(tmp_path):
    sittings = bench("sittings")
    from pipeline.records import RecordError

    _, published = sittings.read_record(ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json", sittings.RunAbout)
    about = sittings.RunAbout(method="ce", eval_every=5, subset="reference", dataset="d", cpu="x", cpu_capability="AVX2",
                              threads=2)
    no_commit = dataclasses.replace(published, git_commit=None)  # Optional without a default: kept as null
    sittings.write_record(tmp_path / "a.json", about, no_commit)
    assert sittings.read_record(tmp_path / "a.json", sittings.RunAbout) == (about, no_commit)
    with pytest.raises(RecordError, match=r"b.json \(being written\): field threads: expected int"):
        sittings.write_record(tmp_path / "b.json", dataclasses.replace(about, threads=None), published)
    assert not list(tmp_path.glob("b.json*"))


def test_a_stage_that_ended_before_its_record_was_written_gets_it_on_the_next_run(tmp_path):
    sittings, study = bench("sittings"), bench("study")
    records = tmp_path / "records"
    first = study.Study(tmp_path / "state", 200, records)
    _, trained = sittings.read_record(ROOT / "docs/records/cifar10-lt100-e200/ce-s0.json", sittings.RunAbout)
    (first.work / "results" / "ssl-base.json").write_text(json.dumps(trained.to_dict()))  # its result, no record
    assert not records.exists()
    out = first.job("ssl-base", "train.py", "--never-run")  # the result is there: no job runs
    said, result = sittings.read_record(records / "ssl-base.json", sittings.StageAbout)
    assert out == result == trained and (said.stage, said.job, said.study_epochs) == ("ssl-base", "train", 200)
    assert said.minutes != said.minutes  # NaN: the sitting that trained it is not this one
