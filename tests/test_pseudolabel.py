"""Pseudo-labelling: the selection policies and balance math (pure), and the Structured Streaming
job for real: available-now, continuous mode picking up a file added while it runs, and restarts
after SIGKILL that lose and duplicate nothing."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from jobs import pseudolabel as pseudolabel_job
from pipeline.pseudolabel import store
from pipeline.pseudolabel.balance import balance_metrics, balance_table
from streaming.score import ModelError, resolve as resolve_model, score
from pipeline.pseudolabel.policies import POLICIES, Policy, class_thresholds
from tests.helpers import POOL_FILES, submit_command

ROOT = Path(__file__).resolve().parent.parent


# --- selection policies and balance: pure ----------------------------------------------------

PRED = np.array([0, 0, 0, 0, 1, 1, 2])
CONF = np.array([0.9, 0.6, 0.99, 0.7, 0.5, 0.8, 0.3])


def test_every_policy_is_registered_and_records_only_its_parameters():
    assert set(POLICIES) == {"all", "threshold", "class_threshold", "top_k_per_class", "crest"}
    assert Policy("threshold", tau=0.8).params() == {"name": "threshold", "tau": 0.8}
    assert Policy("top_k_per_class", top_k=5).params() == {"name": "top_k_per_class", "top_k": 5}


def test_all_keeps_everything_and_threshold_keeps_the_confident():
    assert Policy("all").select(PRED, CONF, 3).all()
    assert Policy("threshold", tau=0.7).select(PRED, CONF, 3).tolist() == [1, 0, 1, 1, 0, 1, 0]


def test_class_threshold_lowers_the_bar_for_rarely_predicted_classes():
    # class 0 predicted 4x, class 1 2x, class 2 once: thresholds 0.8, 0.4, 0.2 with alpha 1
    assert class_thresholds(np.bincount(PRED, minlength=3), 0.8, 1.0) == pytest.approx([0.8, 0.4, 0.2])
    keep = Policy("class_threshold", tau=0.8, alpha=1.0).select(PRED, CONF, 3)
    assert keep.tolist() == [1, 0, 1, 0, 1, 1, 1]  # the tail's 0.3 passes, the head's 0.7 does not


def test_top_k_per_class_keeps_the_k_most_confident_of_each_class():
    keep = Policy("top_k_per_class", top_k=2).select(PRED, CONF, 3)
    assert keep.tolist() == [1, 0, 1, 0, 1, 1, 1]
    tie = Policy("top_k_per_class", top_k=1).select(np.array([1, 1]), np.array([0.5, 0.5]), 2)
    assert tie.tolist() == [True, False]  # ties: the earliest scored


def test_balance_counts_and_hidden_truth_precision_recall_by_hand():
    truth = np.array([0, 1, 0, 0, 1, 2, -1])  # the last image's label is unknown
    in_batch = np.array([0, 0, 0, 0, 1, 1, 1], dtype=bool)
    table = balance_table(3, PRED, CONF, in_batch, ["a", "b", "c"], [50, 10, 2], Policy("threshold", tau=0.7),
                          latency_s=0.5, truth=truth)
    rows = table.to_pylist()
    assert [r["batch_count"] for r in rows] == [0, 2, 1]
    assert [r["cumulative_count"] for r in rows] == [4, 2, 1]
    assert [r["selected_count"] for r in rows] == [3, 1, 0]  # 0.9, 0.99, 0.7 | 0.8 | -
    assert [r["true_count"] for r in rows] == [3, 2, 1]
    # kept as class 0: ids 0, 2, 3 (truth 0, 0, 0) -> precision 1, recall 3/3; kept as 1: id 5 (truth 2)
    assert [r["precision"] for r in rows] == [1.0, 0.0, None]
    assert [r["recall"] for r in rows] == [1.0, 0.0, 0.0]
    assert rows[0]["rows_per_s"] == pytest.approx(3 / 0.5) and rows[0]["cumulative_rows"] == 7
    assert rows[1]["batch_mean_confidence"] == pytest.approx(0.65)
    metrics = balance_metrics(table)
    assert metrics["pl_selected_total"] == 4 and metrics["pl_count_0"] == 4 and metrics["pl_precision"] == 0.75
    assert "pl_imbalance_ratio" not in metrics  # class c has no pseudo-label: infinite, not logged


# --- the streaming job -------------------------------------------------------------------------

FILES = POOL_FILES  # one micro-batch each with --max-files-per-trigger 1


def label_ids(out) -> list[str]:
    return store.read_labels(str(out), columns=["id"]).column("id").to_pylist()


def pool_ids(splits) -> list[str]:
    from pipeline.data import read_table

    return read_table(str(splits / "unlabeled"), columns=["id"]).column("id").to_pylist()


def test_available_now_labels_the_pool_once_like_batch_scoring(spark, base, tmp_path):
    out = tmp_path / "pl"
    result = pseudolabel_job.main(["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"),
                                   "--out", str(out), "--select", "class_threshold", "--tau", "0.9"])
    ids = label_ids(out)
    assert sorted(ids) == sorted(pool_ids(base["splits"])) and len(set(ids)) == len(ids) == 600
    assert result["batches"] == FILES and result["scored"] == 600

    # the stream and a batch read scored by the same function agree
    batch = score(spark.read.parquet(str(base["splits"] / "unlabeled")), resolve_model(base["run_id"])).toPandas()
    streamed = store.read_labels(str(out)).to_pandas().set_index("id").loc[batch["id"]]
    assert (streamed["predicted"].to_numpy() == batch["predicted"].to_numpy()).all()
    assert np.allclose(np.stack(streamed["probs"]), np.stack(batch["probs"]), atol=1e-6)
    assert (streamed["model_run_id"] == base["run_id"]).all()
    assert np.allclose(np.stack(streamed["probs"]).sum(1), 1, atol=1e-5)

    # Spark reads the labels with their micro-batch id (the partition column)
    assert sorted(r[0] for r in spark.read.parquet(str(out / "labels")).select("batch_id").distinct().collect()) \
        == list(range(FILES))

    balance = store.read_balance(str(out)).to_pandas()
    last = balance[balance.batch_id == FILES - 1]
    assert last.cumulative_rows.iloc[0] == 600 and last.cumulative_count.sum() == 600
    assert (balance.groupby("batch_id").batch_count.sum() == 100).all()
    truth = json.loads((base["splits"] / "manifest.json").read_text())["class_counts"]["unlabeled"]
    assert last.true_count.tolist() == truth  # the hidden truth was found beside the pool
    assert last.labeled_count.tolist() == json.loads((base["splits"] / "manifest.json").read_text())[
        "class_counts"]["labeled"]
    assert last.precision.notna().any() and last.recall.notna().all()

    info = store.read_stream_info(str(out))
    assert info.policy == {"name": "class_threshold", "tau": 0.9, "alpha": 1.0}
    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pseudolabel"
    assert run.data.tags["parent_run_id"] == base["run_id"] and run.data.params["policy.name"] == "class_threshold"
    history = mlflow.tracking.MlflowClient().get_metric_history(result["run_id"], "pl_rows_total")
    assert [(m.step, m.value) for m in history] == [(b, 100.0 * (b + 1)) for b in range(FILES)]


@pytest.mark.parametrize("change, key", [
    (["--select", "threshold"], "policy"),
    (["--checkpoint", "NEW"], "checkpoint"),  # a fresh checkpoint would re-score from batch 0 beside the old batches
    (["--max-files-per-trigger", "2"], "trigger"),
])
def test_a_restart_of_another_stream_is_refused_naming_what_differs(spark, base, tmp_path, capsys, change, key):
    out = tmp_path / "pl"
    args = ["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"), "--out", str(out),
            "--max-files-per-trigger", "6"]
    pseudolabel_job.main(args)
    before = sorted(p.name for p in (out / "labels").iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        pseudolabel_job.main(args + [str(tmp_path / "ckpt2") if c == "NEW" else c for c in change])
    assert e.value.code == 1
    assert f"holds pseudo-labels of another stream ({key}:" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "labels").iterdir()) == before


def test_a_restart_whose_checkpoint_is_gone_is_refused(spark, base, tmp_path, capsys):
    out = tmp_path / "pl"
    args = ["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"), "--out", str(out),
            "--max-files-per-trigger", "6"]
    pseudolabel_job.main(args)
    shutil.rmtree(out / "_checkpoint")
    with pytest.raises(SystemExit):
        pseudolabel_job.main(args)
    err = capsys.readouterr().err
    assert "holds 1 micro-batches but their checkpoint" in err and "is gone" in err  # 6 files, one batch


def test_a_registered_alias_is_pinned_to_its_run_on_the_driver(base):
    client = mlflow.tracking.MlflowClient()
    name = f"pinned-{base['run_id'][:8]}"
    version = mlflow.register_model(f"runs:/{base['run_id']}/model", name)
    client.set_registered_model_alias(name, "candidate", version.version)
    model = resolve_model(f"models:/{name}@candidate")
    assert model.uri == f"runs:/{base['run_id']}/model" and model.run_id == base["run_id"]
    assert model.version == f"{name}/{version.version}"  # the version it resolved, recorded with the labels


def _run_with_model_copy(base, tmp_path, edit) -> str:
    """A new run whose "model" artifact is a copy of the base run's, changed by ``edit(folder, run_id)``."""
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{base['run_id']}/model", dst_path=str(tmp_path / "copy")))
    with mlflow.start_run(experiment_id=mlflow.get_run(base["run_id"]).info.experiment_id) as run:
        edit(local, run.info.run_id)
        mlflow.log_artifacts(str(local), "model")
    return run.info.run_id


def test_a_model_whose_mlmodel_names_another_run_is_refused(base, tmp_path):
    other = _run_with_model_copy(base, tmp_path, lambda folder, run_id: None)  # MLmodel still says base's run
    with pytest.raises(ModelError, match=rf"belongs to run {other}, but its MLmodel names run '{base['run_id']}'"):
        resolve_model(other)


def test_a_tampered_model_is_refused_on_the_driver_in_one_short_line(base, tmp_path):
    def tamper(folder, run_id):
        mlmodel = folder / "MLmodel"
        mlmodel.write_text(mlmodel.read_text().replace(base["run_id"], run_id))  # its own run: only the spec lies
        spec = json.loads((folder / "spec.json").read_text())
        (folder / "spec.json").write_text(json.dumps({**spec, "architecture": "x" * 30_000_000}))

    tampered = _run_with_model_copy(base, tmp_path, tamper)
    with pytest.raises(ModelError, match="cannot be loaded: ModelFormatError: model spec: unknown architecture") as e:
        resolve_model(tampered)
    assert len(str(e.value)) < 1000 and "30,000,002 characters" in str(e.value)


def test_unknown_policy_and_missing_model_fail_with_their_names(spark, base, tmp_path, capsys):
    common = ["--input", str(base["splits"] / "unlabeled"), "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        pseudolabel_job.main(["--model", base["run_id"], "--select", "treshold", *common])
    assert "unknown selection policy 'treshold' (did you mean threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pseudolabel_job.main(["--model", "0" * 32, *common])
    assert f"cannot find model '{'0' * 32}'" in capsys.readouterr().err


def start(*args, log: Path) -> subprocess.Popen:
    command, env = submit_command("jobs/pseudolabel.py", *args)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the job ended early:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)


def test_continuous_mode_picks_up_a_file_added_while_running(base, tmp_path):
    pool = sorted((base["splits"] / "unlabeled").glob("*.parquet"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for f in pool[:2]:
        shutil.copy(f, inbox / f.name)
    out, log = tmp_path / "pl", tmp_path / "job.log"
    proc = start("--model", base["run_id"], "--input", inbox, "--out", out, "--trigger", "continuous",
                 "--interval", "1", "--truth", base["splits"] / "unlabeled_truth", log=log)
    try:
        wait_for(lambda: len(label_ids(out)) == 200, proc, log)
        shutil.copy(pool[2], tmp_path / "staging.parquet")  # appear whole: write aside, then rename in
        os.replace(tmp_path / "staging.parquet", inbox / pool[2].name)
        wait_for(lambda: len(label_ids(out)) == 300, proc, log)
        # the balance of a micro-batch is written just after its labels
        wait_for(lambda: store.latest_balance(str(out)).column("cumulative_rows")[0].as_py() == 300, proc, log,
                 timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # stops the query; the MLflow run is marked KILLED
        proc.wait(timeout=60)
    import pyarrow.parquet as pq

    copied = [i for f in pool[:3] for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert sorted(label_ids(out)) == sorted(copied)
    run_id = store.read_stream_info(str(out)).run_id
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_sigkill_and_restart_label_every_image_exactly_once(spark, base, tmp_path):
    out, log = tmp_path / "pl", tmp_path / "job.log"
    args = ["--model", base["run_id"], "--input", base["splits"] / "unlabeled", "--out", out,
            "--select", "top_k_per_class", "--top-k", "20"]
    def writing() -> bool:  # a micro-batch is being scored and written: its folder has no _SUCCESS yet
        labels = out / "labels"
        return labels.exists() and any(not (d / "_SUCCESS").exists() for d in labels.glob("batch_id=*"))

    for kill_after in (1, 3):  # committed micro-batches before each SIGKILL
        proc = start(*args, log=log)
        # the kill lands inside a micro-batch (not between two), after kill_after have committed
        wait_for(lambda: len(store.committed_batches(str(out))) >= kill_after and writing(), proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(label_ids(out)) < 600, "killed too late to test the restart"
    command, env = submit_command("jobs/pseudolabel.py", *args)
    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:]

    ids = label_ids(out)
    assert len(ids) == len(set(ids)) == 600 and sorted(ids) == sorted(pool_ids(base["splits"]))
    assert spark.read.parquet(str(out / "labels")).count() == 600  # Spark readers agree
    # A kill after Spark logged a batch's files but before it logged the batch's offsets makes the
    # restart plan that batch afresh, with the next file too: batches need not be one per file.
    batches = list(store.committed_batches(str(out)))
    assert batches == list(range(len(batches))) and len(batches) <= FILES
    balance = store.read_balance(str(out)).to_pandas()
    assert sorted(balance.batch_id.unique()) == batches, final.stdout[-3000:]  # one per micro-batch, no gap
    last = balance[balance.batch_id == batches[-1]]
    assert last.cumulative_rows.iloc[0] == 600 and (last.selected_count <= 20).all()
    run_id = store.read_stream_info(str(out)).run_id  # one MLflow run across the kills, every step once
    steps = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(run_id, "pl_rows_total")]
    assert steps == batches


@pytest.mark.parametrize("point", ["after-labels", "after-state"])
def test_a_kill_between_labels_state_and_balance_restarts_into_the_unbroken_runs_state(spark, base, tmp_path, point):
    from pipeline.pseudolabel import state as stream_state

    # a sample of 20 rows of 600: the state estimates past it, so its sample must come out the same too
    common = ["--model", base["run_id"], "--input", base["splits"] / "unlabeled", "--select", "class_threshold",
              "--tau", "0.9", "--set", "pseudolabel.sample_values=200"]
    unbroken = tmp_path / "unbroken"
    pseudolabel_job.main([str(a) for a in common] + ["--out", str(unbroken)])
    out, log = tmp_path / "pl", tmp_path / "job.log"
    command, env = submit_command("jobs/pseudolabel.py", *common, "--out", out)
    proc = subprocess.Popen(command, cwd=ROOT, env={**env, "LONGTAIL_STREAM_FAULT": f"{point}:2"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.wait(timeout=300)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    assert f"fault: killed {point} of batch 2" in log.read_text(), log.read_text()[-3000:]
    assert 2 in store.committed_batches(str(out)) and store.latest_balance(str(out)).column("batch_id")[0].as_py() == 1
    assert stream_state.saved_batches(str(out))[-1] == (2 if point == "after-state" else 1)
    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:]

    assert sorted(label_ids(out)) == sorted(label_ids(unbroken)) and len(set(label_ids(out))) == 600
    last = stream_state.saved_batches(str(unbroken))[-1]
    assert stream_state.saved_batches(str(out))[-1] == last
    a, b = stream_state.load(str(unbroken), last), stream_state.load(str(out), last)
    assert not a.complete and a.rows == b.rows == 600
    for key in ("count", "above", "true_count", "right", "hist", "hist_right", "s_id", "s_predicted", "s_probs"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert np.allclose(a.probs_sum, b.probs_sum) and np.allclose(a.confidence_sum, b.confidence_sum)
    kept = ["batch_id", "class_index", "cumulative_count", "selected_count", "true_count", "precision", "prior_em"]
    assert store.read_balance(str(out)).select(kept).to_pylist() == store.read_balance(str(unbroken)).select(kept).to_pylist()
    run_id = store.read_stream_info(str(out)).run_id  # every step logged once
    steps = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(run_id, "pl_rows_total")]
    assert steps == list(range(last + 1))


# --- semi-supervised training on the pseudo-labels ----------------------------------------------

def test_pseudo_labels_train_in_the_pools_order_not_the_streams():
    from pipeline.config import ConfigError
    from pipeline.loaders import in_pool_order

    pool = ["a", "b", "c", "d"]
    rows, ids, labels = in_pool_order(["d", "b", "a"], np.array([3, 1, 0]), pool, "POOL")  # scored d first
    assert rows.tolist() == [0, 1, 3] and ids == ["a", "b", "d"] and labels.tolist() == [0, 1, 3]
    with pytest.raises(ConfigError, match="1 pseudo-labeled ids are not in POOL"):
        in_pool_order(["a", "z"], np.array([0, 1]), pool, "POOL")
    with pytest.raises(ConfigError, match=r"1 ids are pseudo-labelled more than once, e.g. \['b'\]"):
        in_pool_order(["b", "a", "b"], np.array([1, 0, 2]), pool, "POOL")


def test_mixed_batches_hold_the_labeled_share_and_cover_the_labeled_set_once():
    from pipeline.config import DataConfig, SemiConfig, TrainConfig
    from pipeline.data import Augment, ImageSet, MixedLoader

    images = lambda n: torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8)
    labeled = ImageSet(images(40), torch.tensor([0] * 30 + [1] * 10), [f"l{i}" for i in range(40)])
    pseudo = ImageSet(images(7), torch.tensor([1] * 7), [f"u{i}" for i in range(7)])
    cfg = TrainConfig(batch_size=8, semi=SemiConfig(unlabeled_share=0.25), data=DataConfig(augment="none"))
    loader = MixedLoader(labeled, pseudo, [30, 10], cfg, Augment([0.5], [0.5], "none"))
    batches = [(x, y, int((~m).sum()), m) for x, y, m in loader.epoch(0)]
    assert [n for _, _, n, _ in batches] == [6] * 6 + [4] and len(batches) == len(loader)
    assert all(len(y) - n == 2 for _, y, n, _ in batches)  # 2 pseudo-labeled images in every batch
    assert all(not m[:n].any() and m[n:].all() for _, _, n, m in batches)  # labeled rows first
    assert sum(n for _, _, n, _ in batches) == 40
    pseudo_part = np.concatenate([y[n:].numpy() for _, y, n, _ in batches])
    assert (pseudo_part == 1).all() and len(pseudo_part) == 14  # the 7 pseudo-labels cycled twice


def test_train_semi_rounds_are_runs_linked_to_their_pseudo_labels(spark, base, tmp_path):
    from jobs import train_semi as train_semi_job

    pl = tmp_path / "pl"
    labeled = pseudolabel_job.main(["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"),
                                    "--out", str(pl), "--select", "threshold", "--tau", "0.5",
                                    "--max-files-per-trigger", "3"])
    args = ["--splits", str(base["splits"]), "--pseudo-labels", str(pl), "--method", "ce", "--epochs", "2",
            "--rounds", "2", "--experiment", "tests-semi", "--set", f"train.runtime.run_dir={tmp_path / 'runs'}",
            "--set", "train.data.augment=none", "--set", "train.batch_size=32"]
    result = train_semi_job.main(args)
    first, second = result["rounds"]
    run1, run2 = mlflow.get_run(first["run_id"]), mlflow.get_run(second["run_id"])
    assert run1.data.tags["stage"] == run2.data.tags["stage"] == "semi"
    assert run1.data.tags["parent_run_id"] == labeled["run_id"] and run1.data.tags["base_run_id"] == base["run_id"]
    relabel = mlflow.get_run(first["next_pseudolabel_run_id"])  # round 1's model re-labelled the pool
    assert relabel.data.tags["parent_run_id"] == first["run_id"] and relabel.data.tags["stage"] == "pseudolabel"
    assert run2.data.tags["parent_run_id"] == relabel.info.run_id and run2.data.tags["round"] == "2"
    assert run1.info.run_name.endswith("-semi-threshold-s0") and run2.info.run_name.endswith("-semi2-threshold-s0")
    # the run trained on exactly the pseudo-labels the stream's balance counted as selected
    selected = store.latest_balance(str(pl)).column("selected_count").to_pylist()
    assert json.loads(run1.data.params["provenance.semi.pseudo_counts"]) == selected
    labeled_counts = json.loads((base["splits"] / "manifest.json").read_text())["class_counts"]["labeled"]
    trained = json.loads(run1.data.params["provenance.class_counts_trained"])  # what the loss saw: both sets
    assert trained == [a + b for a, b in zip(labeled_counts, selected)]
    assert int(run1.data.params["provenance.semi.pseudo_total"]) == sum(selected) == labeled["selected"]
    assert run2.info.status == "FINISHED" and np.isfinite(run2.data.metrics["final_test_top1"])
    # the same command again: every finished step is taken from the record, nothing is trained twice
    semi_runs = lambda: len(mlflow.search_runs(experiment_names=["tests-semi"], filter_string="tags.stage = 'semi'"))
    before = semi_runs()
    again = train_semi_job.main(args)
    assert [r["run_id"] for r in again["rounds"]] == [first["run_id"], second["run_id"]]
    assert again["run_id"] == result["run_id"] and semi_runs() == before


def test_labels_read_in_scoring_order_whatever_columns_are_asked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch, ids in ((1, ["b", "a"]), (0, ["c"])):
        folder = tmp_path / "labels" / f"batch_id={batch}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": ids, "confidence": pa.array([0.5] * len(ids), pa.float32())}),
                       folder / "part-0.parquet")
        (folder / "_SUCCESS").touch()
    (tmp_path / "labels" / "batch_id=2").mkdir()  # being written: no _SUCCESS, not read
    pq.write_table(pa.table({"id": ["z"], "confidence": pa.array([0.1], pa.float32())}),
                   tmp_path / "labels" / "batch_id=2" / "part-0.parquet")
    table = store.read_labels(str(tmp_path), columns=["confidence"])
    assert table.column_names == ["confidence", "batch_id"] and table.column("batch_id").to_pylist() == [0, 1, 1]
    assert store.read_labels(str(tmp_path), columns=["id"]).column("id").to_pylist() == ["c", "a", "b"]


def test_a_replayed_batch_replaces_its_labels_and_spark_written_batches_read_alike(spark, tmp_path):
    import datetime

    import pyarrow as pa

    from pipeline import schema
    from pipeline.pseudolabel.store import batch_dir

    out = str(tmp_path)
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    row = lambda i, k: {"id": i, "predicted": k, "confidence": 0.5, "probs": [0.5, 0.5], "model_run_id": "r",
                        "scored_at": when}
    # batch 0 as earlier versions wrote it: Spark's writer (list<element>, INT96 timestamps)
    spark.createDataFrame([row("a", 1)], schema.spark_schema(schema.LABEL_COLUMNS)).write.parquet(batch_dir(out, 0))
    declared = schema.arrow_schema(schema.LABEL_COLUMNS)
    store.begin_labels(out, 1)
    store.write_labels(pa.Table.from_pylist([row("b", 0), row("c", 1)], declared), out, 1)
    assert list(store.committed_batches(out)) == [0, 1]
    store.begin_labels(out, 1)  # the replay of batch 1: its first attempt is gone before it is scored again
    assert list(store.committed_batches(out)) == [0] and not os.listdir(batch_dir(out, 1))
    store.write_labels(pa.Table.from_pylist([row("c", 1), row("d", 0)], declared), out, 1)
    table = store.read_labels(out)
    assert table.column("id").to_pylist() == ["a", "c", "d"] and table.column("batch_id").to_pylist() == [0, 1, 1]
    assert table.schema.remove(table.schema.get_field_index("batch_id")) == declared
    assert set(table.column("scored_at").to_pylist()) == {when}
    assert sorted(r.id for r in spark.read.parquet(str(tmp_path / "labels")).collect()) == ["a", "c", "d"]


def test_raw_rows_whose_length_errors_cancel_out_are_rejected_not_shifted():
    import pandas as pd

    from streaming.score import images_array

    frame = pd.DataFrame({"id": ["a", "b", "c"], "image": [bytes(3), bytes(5), bytes(range(4))],
                          "image_format": ["raw", "raw", "raw"], "height": [2] * 3, "width": [2] * 3,
                          "channels": [1] * 3})  # 3 + 5 bytes would fill 2 images of 4
    pixels, errors = images_array(frame)
    assert errors[0] == "raw image of 3 bytes, 2x2x1 needs 4" and errors[1].startswith("raw image of 5 bytes")
    assert errors[2] is None and pixels.shape == (1, 1, 2, 2) and pixels.flatten().tolist() == [0, 1, 2, 3]


def test_a_corrupt_file_and_an_undecodable_image_are_rejected_and_the_stream_goes_on(spark, base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import schema

    pool = tmp_path / "pool"
    shutil.copytree(base["splits"] / "unlabeled", pool)
    (pool / "part-99998-garbage.parquet").write_bytes(b"PAR1 this is not parquet at all")
    first = next(iter(sorted(pool.glob("part-0*.parquet"))))
    row = pq.read_table(first).slice(0, 1).to_pylist()[0]
    broken = [{**row, "id": "broken-jpeg", "image": b"\xff\xd8 not a jpeg", "image_format": "jpeg"},
              {**row, "id": "short-raw", "image": row["image"][:-1]}]
    pq.write_table(pa.Table.from_pylist(broken, schema=schema.arrow_schema(schema.IMAGE_COLUMNS)),
                   pool / "part-99999-broken.parquet")
    out = tmp_path / "pl"
    result = pseudolabel_job.main(["--model", base["run_id"], "--input", str(pool), "--out", str(out),
                                   "--truth", str(base["splits"] / "unlabeled_truth"), "--max-files-per-trigger", "2"])
    assert sorted(label_ids(out)) == sorted(pool_ids(base["splits"]))  # every good image labeled once
    rejected = store.read_rejected(str(out)).to_pylist()
    assert result["rejected"] == len(rejected) == 3
    by_reason = {r["reason"]: r for r in rejected if r["reason"] == "unreadable_file"}
    assert by_reason["unreadable_file"]["source"].endswith("part-99998-garbage.parquet")
    scored = {r["id"]: r["detail"] for r in rejected if r["reason"] == "not_scorable"}
    assert scored.keys() == {"broken-jpeg", "short-raw"} and "cannot decode the jpeg image" in scored["broken-jpeg"]


def test_a_checkpoint_serves_one_output(tmp_path):
    from streaming.checkpoint import StreamError, claim_checkpoint

    ckpt = str(tmp_path / "ckpt")
    claim_checkpoint(ckpt, "/out/a")
    claim_checkpoint(ckpt, "/out/a")  # the same stream restarting
    with pytest.raises(StreamError, match="belongs to the stream writing /out/a"):
        claim_checkpoint(ckpt, "/out/b")
    (tmp_path / "foreign" / "offsets").mkdir(parents=True)
    with pytest.raises(StreamError, match="of unknown origin"):
        claim_checkpoint(str(tmp_path / "foreign"), "/out/a")


def test_batch_files_come_from_the_source_log_or_its_compaction_decoded(tmp_path):
    from streaming.checkpoint import batch_files

    log = tmp_path / "sources" / "0"
    log.mkdir(parents=True)
    entry = lambda path, b: json.dumps({"path": path, "timestamp": 1, "batchId": b})
    (log / "3").write_text("v1\n" + entry("file:///data/pool%20dir/part-3.parquet", 3) + "\n")
    (log / "9.compact").write_text("v1\n" + "\n".join(entry(f"file:///data/p/part-{b}.parquet", b) for b in range(10)))
    assert batch_files(str(tmp_path), 3) == ["/data/pool dir/part-3.parquet"]
    assert batch_files(str(tmp_path), 5) == ["/data/p/part-5.parquet"]  # folded into 9.compact
    assert batch_files(str(tmp_path), 11) == []


def test_batch_files_read_the_checkpoint_of_the_pinned_spark_and_refuse_another_log_version(spark, tmp_path):
    """The one reader of Spark's private checkpoint files, against a real query of the pinned Spark: an
    upgrade that changes the file source's log fails here, not silently in the stream."""
    import pyspark

    from streaming.checkpoint import StreamError, batch_files

    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = tmp_path / "pool dir"  # a space: Spark logs percent-encoded URIs
    pool.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())}), pool / f"part-{i}.parquet")
    seen = {}
    query = (spark.readStream.schema("id long").option("maxFilesPerTrigger", 1).parquet(str(pool))
             .writeStream.option("checkpointLocation", str(tmp_path / "ckpt"))
             .foreachBatch(lambda df, batch_id: seen.__setitem__(batch_id, df.count()))
             .trigger(availableNow=True).start())
    query.awaitTermination(120)
    assert sorted(seen) == [0, 1, 2] and pyspark.__version__.startswith("4.0")
    logged = [batch_files(str(tmp_path / "ckpt"), b) for b in range(3)]
    assert all(len(f) == 1 for f in logged)
    assert sorted(f[0] for f in logged) == sorted(str(p) for p in pool.glob("*.parquet"))
    log = tmp_path / "ckpt" / "sources" / "0" / "0"
    log.write_text(log.read_text().replace("v1", "v9", 1))
    with pytest.raises(StreamError, match=r"log version 'v9' .* reads v1"):
        batch_files(str(tmp_path / "ckpt"), 0)


def test_crest_policy_is_recorded_with_its_counts_and_selects_by_rank():
    policy = Policy("crest", crest_alpha=3.0, labeled_counts=(10, 1000, 100))
    assert policy.params() == {"name": "crest", "crest_alpha": 3.0, "labeled_counts": [10, 1000, 100], "rules": 2}
    predicted = np.array([1] * 10 + [0] * 10)
    keep = policy.select(predicted, np.linspace(0, 1, 20), 3)
    # class 1 is the head (rank 1): mu = (10 / 1000)^(1/3) ~ 0.215 -> 2 of 10; class 0 the rarest: all 10
    assert keep[:10].sum() == 2 and keep[10:].all() and keep[8] and keep[9]


def test_a_prior_corrected_stream_records_em_and_bbse_and_the_trainer_keeps_what_it_counted(spark, base, tmp_path,
                                                                                             capsys):
    from pipeline.pseudolabel.store import selected_pseudo_labels

    out = tmp_path / "pl-em"
    held_out = base["splits"] / "test"  # labeled and not trained on: BBSE's held-out split here
    result = pseudolabel_job.main(["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"),
                                   "--out", str(out), "--select", "threshold", "--tau", "0.5",
                                   "--adjust", "bbse", "--val", str(held_out)])
    info = store.read_stream_info(str(out))
    assert info.bbse["val"] == str(held_out) and info.bbse["val_rows"] > 0
    assert info.policy["adjust"] == "bbse" and info.policy["confusion"] == info.bbse["confusion"]
    balance = store.read_balance(str(out)).to_pandas()
    last = balance[balance.batch_id == balance.batch_id.max()]
    assert last.prior_em.sum() == pytest.approx(1.0) and last.prior_bbse.sum() == pytest.approx(1.0)
    assert (last.em_iterations >= 1).all() and (last.bbse_condition >= 1).all()
    assert last.adjusted_count.sum() == 600
    ids, labels, _ = selected_pseudo_labels(str(out))  # the trainer's reading: the very rows the stream counted
    assert np.bincount(labels, minlength=len(last)).tolist() == last.selected_count.tolist() and len(ids) == len(labels)
    assert result["prior_bbse"] == pytest.approx(last.prior_bbse.round(4).tolist())
    metrics = mlflow.get_run(result["run_id"]).data.metrics
    assert {"pl_prior_l1_em", "pl_prior_l1_bbse", "pl_prior_l1_labeled", "pl_bbse_condition"} <= set(metrics)

    # a restart with another correction is another stream
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        pseudolabel_job.main(["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"),
                              "--out", str(out), "--select", "threshold", "--tau", "0.5", "--adjust", "em",
                              "--val", str(held_out)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"{out} holds pseudo-labels of another stream (policy:" in err and "'adjust': 'bbse'" in err


def test_bbse_without_a_held_out_split_is_refused_before_any_work(spark, base, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pseudolabel_job.main(["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"),
                              "--out", str(tmp_path / "pl"), "--adjust", "bbse"])
    assert "val_per_class" in capsys.readouterr().err and not (tmp_path / "pl").exists()


def test_a_bf16_stream_is_checked_against_fp32_first_and_a_restart_cannot_change_precision(spark, base, tmp_path,
                                                                                          capsys):
    from pipeline.data import read_table

    out = tmp_path / "pl-bf16"
    args = ["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"), "--out", str(out)]
    result = pseudolabel_job.main([*args, "--precision", "bf16"])
    check = store.read_stream_info(str(out)).scoring_check
    test_rows = read_table(str(base["splits"] / "test"), columns=["id"]).num_rows
    assert check["precision"] == "bf16" and check["images"] == min(2000, test_rows)
    assert check["agreement"] >= 0.9 and abs(check["top1"] - check["fp32_top1"]) <= 0.05
    assert result["scoring_precision"] == "bf16" and result["scored"] == 600
    metrics = mlflow.get_run(result["run_id"]).data.metrics
    assert metrics["scoring_agreement"] == pytest.approx(check["agreement"])
    # the same pool in fp32: the labels agree with the bf16 stream's almost everywhere
    exact = tmp_path / "pl-fp32"
    pseudolabel_job.main(["--model", base["run_id"], "--input", str(base["splits"] / "unlabeled"), "--out", str(exact)])
    def labels(path):
        t = store.read_labels(str(path), columns=["id", "predicted"])
        return dict(zip(t.column("id").to_pylist(), t.column("predicted").to_pylist()))

    a, b = labels(out), labels(exact)
    assert a.keys() == b.keys() and np.mean([a[i] == b[i] for i in a]) >= 0.9
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # one output, one precision
        pseudolabel_job.main([*args, "--precision", "fp32"])
    assert e.value.code == 1
    assert "holds pseudo-labels of another stream (scoring_precision: 'bf16', now 'fp32')" in capsys.readouterr().err


def test_the_overall_precision_ignores_classes_with_nothing_kept_even_as_nan():
    from pipeline.pseudolabel.balance import overall_precision

    rows = [{"true_count": 5, "selected_count": 4, "precision": 0.5},
            {"true_count": 3, "selected_count": 0, "precision": float("nan")},  # how pandas hands a null over
            {"true_count": 2, "selected_count": 1, "precision": 1.0}]
    assert overall_precision(rows) == pytest.approx(3 / 5)
    assert overall_precision([{**r, "true_count": None} for r in rows]) is None
