"""Runs longer than a sitting (bench/cifar10_lt.py): checkpoints carried between the state folder and
a carry folder, newest wins, and the records' table."""
import importlib
import os
import sys
from pathlib import Path

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


def test_table_rows_carry_final_top1_minutes_step_and_the_reference_figures():
    record = {"method": "ce", "seed": 0, "epochs": 200, "final_test_top1": 0.6512, "final_test_many_accuracy": 0.9,
              "final_test_medium_accuracy": 0.5, "final_test_few_accuracy": float("nan"),
              "best_on_test_epoch_top1": 0.66, "best_on_test_epoch": 195, "train_minutes": 270.4, "median_epoch_seconds": 78.0,
              "step": {"precision": "fp32", "channels_last": False}, "device": "cpu", "cpu_capability": "AVX2"}
    row = bench("cifar10_lt").table([record]).splitlines()[-1]
    assert row.startswith("| ce | 0 | 200 | 65.1 | 90.0 | 50.0 | - | 66.0 (epoch 195) | 270 (260) | fp32, cpu AVX2 |")
    assert "64.8 final" in row and "70.4" in row


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
    first.stream("ssl-pseudolabel-all", {"run_id": "r1"}, tmp_path / "pool", first.work / "pl", "all", {}, "e")
    second = study.Study(tmp_path / "machine-2", 1, carry=carry)  # another machine: no state, the same carry

    def never(*args, **kw):
        raise AssertionError("scored again")

    second.job = lambda stage, *a, **kw: (__import__("json").loads((second.work / "results" / f"{stage}.json").read_text())
                                          if (second.work / "results" / f"{stage}.json").exists() else never())
    assert second.stream("ssl-pseudolabel-all", {"run_id": "r2"}, tmp_path / "pool", second.work / "pl", "all", {},
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
