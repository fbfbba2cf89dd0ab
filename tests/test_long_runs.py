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


def test_carry_restores_a_lost_state_and_keeps_the_newest_checkpoint(tmp_path):
    sync = bench("sittings").sync_carry
    state, carry = tmp_path / "state", tmp_path / "carry"
    (state / "run-a").mkdir(parents=True)
    (state / "run-a" / "checkpoint.pt").write_bytes(b"epoch 7")
    sync(state, carry, restore=False)
    assert (carry / "run-a" / "checkpoint.pt").read_bytes() == b"epoch 7"
    new_state = tmp_path / "new-machine"
    sync(new_state, carry, restore=True)  # a new machine: the state is gone, the carry brings the run back
    assert (new_state / "run-a" / "checkpoint.pt").read_bytes() == b"epoch 7"
    older = state / "run-a" / "checkpoint.pt"
    os.utime(older, (1, 1))  # the carried copy is newer than this one: restoring must not go back
    (carry / "run-a" / "checkpoint.pt").write_bytes(b"epoch 9")
    sync(state, carry, restore=True)
    assert older.read_bytes() == b"epoch 9"
    sync(state, carry, restore=False)  # the same age both sides: nothing to copy, nothing lost
    assert (carry / "run-a" / "checkpoint.pt").read_bytes() == b"epoch 9"
    assert not list(carry.rglob("*.tmp")) and not list(state.rglob("*.tmp"))


def test_table_rows_carry_final_top1_minutes_step_and_the_reference_figures():
    record = {"method": "ce", "seed": 0, "epochs": 200, "final_test_top1": 0.6512, "final_test_many_accuracy": 0.9,
              "final_test_medium_accuracy": 0.5, "final_test_few_accuracy": float("nan"),
              "best_on_test_epoch_top1": 0.66, "best_on_test_epoch": 195, "train_minutes": 270.4, "median_epoch_seconds": 78.0,
              "step": {"precision": "fp32", "channels_last": False}, "device": "cpu", "cpu_capability": "AVX2"}
    row = bench("cifar10_lt").table([record]).splitlines()[-1]
    assert row.startswith("| ce | 0 | 200 | 65.1 | 90.0 | 50.0 | nan | 66.0 (epoch 195) | 270 (260) | fp32, cpu AVX2 |")
    assert "64.8 final" in row and "70.4" in row
