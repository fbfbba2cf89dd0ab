"""Training: fit as a plain process (what unit tests and debuggers call), the MLflow run it leaves,
resume after a real SIGKILL, and jobs/train.py with 2 processes under TorchDistributor."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from jobs import ingest as ingest_job, longtail as longtail_job, train as train_job
from pipeline.config import MOVED, resolve
from pipeline.tracking import load_model
from pipeline.train import fit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits(spark, tmp_path_factory):
    """Long-tailed digits, small: 40 images in the head class, rho 10."""
    base = tmp_path_factory.mktemp("train")
    ingest_job.main(["--dataset", "digits", "--out", str(base / "digits")])
    longtail_job.main(["--data", str(base / "digits"), "--out", str(base / "lt"), "--imbalance-ratio", "10",
                       "--labeled-max", "40", "--val-per-class", "2", "--unlabeled-max", "10"])
    return base / "lt"


def cfg_for(splits, tmp_path, method="ce", **train):
    """The recipe's config with these train settings; a key may be given by its leaf (lr, ae_mode), its
    section is then the one config.MOVED names."""
    sets = {"splits": str(splits), "run_dir": str(tmp_path / "runs"), "epochs": 2, "batch_size": 32,
            "augment": "none", "experiment": "tests", "method": method, **train}
    return resolve([str(ROOT / "conf/methods" / f"{method}.yaml")], [(f"train.{MOVED.get(k, k)}", str(v)) for k, v in sets.items()])


def test_fit_leaves_a_complete_mlflow_run(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a short run still gets samples
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    result = fit(cfg_for(splits, tmp_path, "ldam_drw", epochs=3))  # milestones 160, 180 of 200 -> epoch 2
    run = mlflow.get_run(result["run_id"])
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["loss.name"] == "ldam" and params["loss.class_weights"] == "effective_number" and params["head"] == "normed"
    manifest = json.loads((splits / "manifest.json").read_text())
    assert params["provenance.manifest_sha256"] == manifest["manifest_sha256"]
    assert params["provenance.git_commit"] and params["provenance.seed"] == "0"
    assert {tags[k] for k in ("dataset", "method", "stage", "seed")} == {"digits", "ldam_drw", "base", "0"}
    assert tags["imbalance_ratio"] == "10"
    client = mlflow.tracking.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_top1")] == [0, 1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr")] == pytest.approx([0.1, 0.1, 0.001])
    assert metrics["final_test_top1"] == pytest.approx(result["final_test_top1"])
    assert "best_on_test_epoch_top1" in metrics and "final_test_class_acc_9" in metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "per_class_accuracy.png", "learning_curves.png", "config.json",
            "manifest.json", "final_test_metrics.json", "checkpoint"} <= artifacts
    model = load_model(result["model_uri"])
    images = torch.rand(3, 1, 8, 8)  # another batch size than the logged example (2)
    assert model(images).shape == (3, 10)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert files == {"model/MLmodel", "model/spec.json", "model/weights.pt"}  # no pickled classes, no code
    pyfunc = mlflow.pyfunc.load_model(result["model_uri"])  # the python_function flavor, the same weights
    assert np.allclose(pyfunc.predict(images.numpy()), model(images).detach().numpy(), atol=1e-5)
    # lineage: the labeled split trained it, the test split evaluated it, each with its sha256
    inputs = {(i.dataset.name, [t.value for t in i.tags if t.key == "mlflow.data.context"][0]): i
              for i in run.inputs.dataset_inputs}
    assert set(inputs) == {("labeled", "training"), ("test", "evaluation")}
    labeled = inputs[("labeled", "training")]
    assert labeled.dataset.digest == manifest["ids_sha256"]["labeled"][:36]
    assert json.loads(labeled.dataset.source)["uri"] == str(splits / "labeled")
    assert {t.key: t.value for t in labeled.tags}["sha256"] == manifest["ids_sha256"]["labeled"]
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    assert any(k.startswith("system/cpu") for k in metrics) and any(k.startswith("system/system_memory") for k in metrics)


def test_checkpoint_carries_the_config_and_loads_weights_only(splits, tmp_path):
    cfg = cfg_for(splits, tmp_path, "ce", epochs=1)
    fit(cfg)
    ckpt = next((tmp_path / "runs").rglob("checkpoint.pt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["train"]["loss"]["name"] == "ce" and state["epoch"] == 0
    assert state["provenance"]["manifest_sha256"]


def test_posthoc_adjusted_export_shifts_predictions_to_the_tail(splits, tmp_path):
    result = fit(cfg_for(splits, tmp_path, "logit_adjust_posthoc", epochs=1))
    model = load_model(result["model_uri"])
    assert hasattr(model.model, "log_prior") and model.model.tau == 1.0


def test_resume_after_sigkill_reaches_the_same_final_state(splits, tmp_path):
    epochs = 6
    straight = cfg_for(splits, tmp_path / "a", "ce", epochs=epochs)
    fit(straight)
    reference = torch.load(next((tmp_path / "a").rglob("checkpoint.pt")), weights_only=True)

    killed_dir = tmp_path / "b"
    code = (f"from pipeline.config import resolve; from pipeline.train import fit; "
            f"import tests.test_train as t; from pathlib import Path; "
            f"fit(t.cfg_for(Path({str(splits)!r}), Path({str(killed_dir)!r}), 'ce', epochs={epochs}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed_dir / "runs"
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(ckpt.rglob("checkpoint.pt"))
        if found and torch.load(found[0], weights_only=True)["epoch"] >= 1:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = torch.load(found[0], weights_only=True)["epoch"]
    assert at_kill < epochs - 1, "killed too late to test resuming"

    killed_run = torch.load(found[0], weights_only=True)["run_id"]
    result = fit(cfg_for(splits, killed_dir, "ce", epochs=epochs, resume="true"))
    resumed = torch.load(found[0], weights_only=True)
    assert result["run_id"] == resumed["run_id"] == killed_run  # the same MLflow run, continued
    assert mlflow.get_run(killed_run).info.status == "FINISHED"
    for key, value in reference["model"].items():
        assert torch.allclose(value.float(), resumed["model"][key].float(), atol=1e-5), key
    steps = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(result["run_id"], "train_loss")]
    assert steps == list(range(epochs))  # every epoch logged exactly once across the kill


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default_only(splits, tmp_path):
    first = fit(cfg_for(splits, tmp_path, "ce", epochs=2))
    ckpt = next((tmp_path / "runs").rglob("checkpoint.pt"))
    state = torch.load(ckpt, weights_only=True)
    del state["config_key"]["semi.cutout"]  # as written by code that did not have the setting yet
    older = ckpt.parent.with_name(ckpt.parent.name[:-10] + "0" * 10)  # its folder digest was another
    older.mkdir()
    torch.save(state, older / "checkpoint.pt")
    ckpt.unlink()
    again = fit(cfg_for(splits, tmp_path, "ce", epochs=2, resume="true"))
    assert again["run_id"] == first["run_id"] and again["final_test_top1"] == pytest.approx(first["final_test_top1"])
    with pytest.raises(Exception, match=r"other settings: train.semi.cutout=None \(now 8\)"):
        fit(cfg_for(splits, tmp_path, "ce", epochs=2, resume="true", cutout=8))


def test_runs_of_one_name_on_other_data_never_share_a_checkpoint(splits, tmp_path, spark):
    first = fit(cfg_for(splits, tmp_path, "ce", epochs=1))
    other = tmp_path / "other-splits"  # the same labeled images, another pool: another manifest
    longtail_job.main(["--data", str(splits.parent / "digits"), "--out", str(other), "--imbalance-ratio", "10",
                       "--labeled-max", "40", "--val-per-class", "2", "--unlabeled-max", "6"])
    again = fit(cfg_for(other, tmp_path, "ce", epochs=1, resume="true"))  # a new run, not the first one resumed
    assert again["run_id"] != first["run_id"]
    assert len(list((tmp_path / "runs").glob("*/checkpoint.pt"))) == 2
    assert fit(cfg_for(splits, tmp_path, "ce", epochs=1, resume="true"))["run_id"] == first["run_id"]


def test_eval_every_evaluates_every_kth_and_the_last_epoch_without_changing_the_weights(splits, tmp_path):
    every = fit(cfg_for(splits, tmp_path / "a", "ce", epochs=5, eval_every=2))
    fit(cfg_for(splits, tmp_path / "b", "ce", epochs=5))
    client = mlflow.tracking.MlflowClient()
    assert [m.step for m in client.get_metric_history(every["run_id"], "test_top1")] == [1, 3, 4]
    assert [m.step for m in client.get_metric_history(every["run_id"], "train_loss")] == [0, 1, 2, 3, 4]
    assert every["epochs_evaluated"] == 3 and every["best_on_test_epoch"] in (2, 4, 5)
    assert every["train_minutes"] > 0 and every["epochs"] == 5
    a, b = (torch.load(next((tmp_path / d).rglob("checkpoint.pt")), weights_only=True) for d in "ab")
    assert a["epoch"] == b["epoch"] == 4
    for key, value in b["model"].items():  # evaluation reads the model, never moves it
        assert torch.equal(value, a["model"][key]), key


def test_resume_in_a_new_tracking_store_opens_a_new_run_with_every_epoch(splits, tmp_path, monkeypatch):
    first = fit(cfg_for(splits, tmp_path, "ce", epochs=3))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/new-store.db")  # another machine's store
    again = fit(cfg_for(splits, tmp_path, "ce", epochs=3, resume="true"))
    assert again["run_id"] != first["run_id"]
    assert again["final_test_top1"] == pytest.approx(first["final_test_top1"])  # the checkpoint's weights
    client = mlflow.tracking.MlflowClient()
    run = client.get_run(again["run_id"])
    assert run.data.tags["resumed_from_run_id"] == first["run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(again["run_id"], "train_loss")] == [0, 1, 2]
    assert run.data.params["provenance.seed"] == "0"  # opened with its parameters, as a new run is


def test_config_sha256_names_the_settings_not_where_the_inputs_lie(splits, tmp_path):
    from pipeline.config import config_sha256

    here = config_sha256(cfg_for(splits, tmp_path / "a", "ce", epochs=3, eval_every=2))
    assert here == config_sha256(cfg_for(Path("/elsewhere/splits"), tmp_path / "b", "ce", epochs=3, resume="true"))
    assert here != config_sha256(cfg_for(splits, tmp_path, "ce", epochs=4))
    assert here != config_sha256(cfg_for(splits, tmp_path, "ce", epochs=3, lr=0.05))


def test_report_of_an_earlier_run_is_rebuilt_from_what_it_logged(splits, tmp_path):
    from jobs import report as report_job

    result = fit(cfg_for(splits, tmp_path, "ce", epochs=2))
    original = mlflow.artifacts.load_text(f"runs:/{result['run_id']}/report.html")
    page = report_job.main(["--run", result["run_id"], "--out", str(tmp_path / "r.html")])
    assert (tmp_path / "r.html").read_text() == page
    again = mlflow.artifacts.load_text(f"runs:/{result['run_id']}/report.html")
    assert again == page and len(page) > 10_000 and "<h2>Confusion matrix</h2>" in page
    for section in ("Per-class accuracy", "Learning curves", "Provenance", "manifest sha256"):
        assert section in page and section in original
    assert f"{100 * result['final_test_top1']:.1f}" in page
    with pytest.raises(SystemExit, match="cannot rebuild the report of run no-such-run"):
        report_job.main(["--run", "no-such-run"])


def test_sigmoid_recipe_trains_from_the_prior_bias_and_records_its_normalisation(splits, tmp_path):
    fit(cfg_for(splits, tmp_path, "cb_sigmoid", epochs=1, lr=0.0))  # lr 0: the head keeps its initial bias
    state = torch.load(next(tmp_path.rglob("checkpoint.pt")), weights_only=True)
    assert torch.allclose(state["model"]["head.bias"], torch.full((10,), -float(np.log(9))))
    manifest = json.loads((splits / "manifest.json").read_text())
    assert manifest["normalization"] is None  # digits: no reference constants, measured on the labeled split
    assert state["provenance"]["normalization"]["mean"] != [0.4914, 0.4822, 0.4465]
    custom = fit(cfg_for(splits, tmp_path / "n", "ce", epochs=1, norm_mean="[0.3]", norm_std="[0.2]"))
    params = mlflow.get_run(custom["run_id"]).data.params
    assert json.loads(params["provenance.normalization.mean"]) == [pytest.approx(0.3)]
    assert json.loads(params["provenance.normalization.std"]) == [pytest.approx(0.2)]


def test_register_makes_a_version_with_the_candidate_alias(splits, tmp_path):
    result = fit(cfg_for(splits, tmp_path, "ce", epochs=1, register="tests-registered"))
    version = mlflow.tracking.MlflowClient().get_model_version_by_alias("tests-registered", "candidate")
    assert result["registered_model"] == f"models:/tests-registered/{version.version}"
    assert version.run_id == result["run_id"]
    assert load_model("models:/tests-registered@candidate")(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_resume_with_other_settings_is_refused_naming_them(splits, tmp_path):
    from pipeline.config import ConfigError

    fit(cfg_for(splits, tmp_path, "ce", epochs=1))
    with pytest.raises(ConfigError, match=r"other settings: train.optim.lr=0.1 \(now 0.05\)"):
        fit(cfg_for(splits, tmp_path, "ce", epochs=1, lr=0.05, resume="true"))
    fresh = fit(cfg_for(splits, tmp_path, "ce", epochs=1, lr=0.05))  # without --resume: a run of its own
    folders = sorted(p.parent.name for p in tmp_path.rglob("checkpoint.pt"))
    assert len(folders) == 2 and folders[0].rsplit("-", 1)[0] == folders[1].rsplit("-", 1)[0]
    assert mlflow.get_run(fresh["run_id"]).data.params["optim.lr"] == "0.05"


def test_train_job_with_two_processes_under_torchdistributor(spark, splits, tmp_path):
    result = train_job.main(["--splits", str(splits), "--method", "balanced_softmax", "--epochs", "1",
                             "--num-processes", "2", "--experiment", "tests-ddp",
                             "--set", f"train.runtime.run_dir={tmp_path}", "--set", "train.data.augment=none"])
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["provenance.world_size"] == "2" and run.data.params["loss.name"] == "balanced_softmax"
    assert run.info.status == "FINISHED" and np.isfinite(run.data.metrics["final_test_top1"])


def test_unknown_method_lists_the_recipes(capsys):
    with pytest.raises(SystemExit):
        train_job.main(["--splits", "x", "--method", "ldam_drv"])
    err = capsys.readouterr().err
    assert "no recipe 'ldam_drv'" in err and "ldam_drw" in err


def test_petastorm_loader_gives_every_rank_equal_steps_from_disjoint_shards(splits):
    from pipeline.data import Augment, parquet_files
    from pipeline.petastorm_loader import PetastormLoader

    assert len(parquet_files(str(splits / "labeled"))) >= 2, "needs row groups for two shards"
    cfg = resolve([], [("train.batch_size", "16")]).train
    ranks = [PetastormLoader(str(splits / "labeled"), None, cfg, Augment([0.5], [0.5], "none"), rank=r, world=2)
             for r in range(2)]
    try:
        seen = []
        for loader in ranks:
            batches = list(loader.epoch(0, with_ids=True))
            rows = json.loads((splits / "manifest.json").read_text())["totals"]["labeled"]
            assert len(batches) == len(loader) == (rows // 2) // 8  # rows // world // per-rank batch
            assert all(x.shape == (8, 1, 8, 8) and x.dtype == torch.float32 for x, _, _ in batches)
            seen.append({i for _, _, ids in batches for i in ids})
    finally:
        for loader in ranks:
            loader.close()
    assert not seen[0] & seen[1]  # row-group shards do not overlap
    labeled_ids = set(read_ids(splits / "labeled"))
    assert seen[0] | seen[1] <= labeled_ids


def read_ids(path):
    from tests.helpers import read_table

    return read_table(path).column("id").to_pylist()


def test_fit_on_the_petastorm_path(splits, tmp_path):
    result = fit(cfg_for(splits, tmp_path, "ce", epochs=2, loader="petastorm"))
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["provenance.loader"] == "petastorm"
    assert 0 <= result["final_test_top1"] <= 1


def test_auto_loader_streams_when_the_split_exceeds_the_memory_limit(splits, tmp_path):
    result = fit(cfg_for(splits, tmp_path, "ce", epochs=1, loader="auto", memory_limit_mb=0))
    assert mlflow.get_run(result["run_id"]).data.params["provenance.loader"] == "petastorm"


def test_petastorm_refuses_samplers_it_cannot_draw(splits, tmp_path):
    from pipeline.data import DataError

    with pytest.raises(DataError, match="cannot draw sampler 'class_balanced'"):
        fit(cfg_for(splits, tmp_path, "resample", epochs=1, loader="petastorm"))


@pytest.mark.parametrize("mode", ["classify", "joint", "separate"])
def test_autoencoder_classifier_trains_in_each_mode(splits, tmp_path, mode):
    cfg = cfg_for(splits, tmp_path, "ce", epochs=1, model="unet_ae", ae_mode=mode, ae_epochs=1)
    result = fit(cfg)
    client = mlflow.tracking.MlflowClient()
    steps = [m.step for m in client.get_metric_history(result["run_id"], "train_loss")]
    assert steps == ([0, 1] if mode == "separate" else [0])  # separate: 1 reconstruction + 1 classifier epoch
    exported = load_model(result["model_uri"])
    assert not any("decoder" in k for k in exported.state_dict())
    assert exported(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_separate_mode_keeps_the_encoder_frozen_after_reconstruction(splits, tmp_path):
    cfg = cfg_for(splits, tmp_path, "ce", epochs=2, model="unet_ae", ae_mode="separate", ae_epochs=1)
    import pipeline.train as train_module  # the loop saves every epoch's checkpoint through run.save_atomic

    snapshots = {}
    original = train_module.save_atomic

    def spy(obj, path):
        snapshots[obj["epoch"]] = {k: v.clone() for k, v in obj["model"].items()}
        original(obj, path)

    train_module.save_atomic = spy
    try:
        fit(cfg)
    finally:
        train_module.save_atomic = original
    encoder = [k for k in snapshots[0] if k.startswith("backbone.")]
    assert encoder and all(torch.equal(snapshots[0][k], snapshots[2][k]) for k in encoder)  # BN stats included
    assert not torch.equal(snapshots[1]["head.weight"], snapshots[2]["head.weight"])


def test_autoencoder_modes_need_an_autoencoder_model(splits, tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="train.ae.mode=joint needs an autoencoder model"):
        fit(cfg_for(splits, tmp_path, "ce", epochs=1, ae_mode="joint"))


def test_pretrained_run_initialises_the_backbone_and_is_recorded(splits, tmp_path):
    from pipeline.pretrained import load_backbone

    first = fit(cfg_for(splits, tmp_path / "a", "ce", epochs=1))
    trained = torch.load(next((tmp_path / "a").rglob("checkpoint.pt")), weights_only=True)["model"]
    from models import create_model

    fresh = create_model("resnet32", num_classes=10, in_channels=1, image_size=8)
    info = load_backbone(fresh, first["run_id"])  # by MLflow run id
    assert info["pretrained_run_id"] == first["run_id"] and info["pretrained_method"] == "ce"
    for key, value in fresh.backbone.state_dict().items():
        assert torch.equal(value, trained[f"backbone.{key}"]), key
    second = fit(cfg_for(splits, tmp_path / "b", "ldam_drw", epochs=1, pretrained=first["run_id"]))
    run = mlflow.get_run(second["run_id"])
    assert run.data.params["provenance.pretrained_run_id"] == first["run_id"]
    assert run.data.tags["pretrained"] == first["run_id"]


def test_pretrained_from_another_architecture_lists_the_offending_keys(splits, tmp_path):
    from models import create_model
    from pipeline.pretrained import PretrainedError, load_backbone

    fit(cfg_for(splits, tmp_path, "ce", epochs=1))
    ckpt = next(tmp_path.rglob("checkpoint.pt"))
    smaller = create_model("resnet20", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(PretrainedError, match=r"unexpected: layers\.\d+\..*"):
        load_backbone(smaller, str(ckpt))
    wrong_channels = create_model("resnet32", num_classes=10, in_channels=3, image_size=8)
    with pytest.raises(PretrainedError, match=r"shape mismatch: stem\.0\.weight \(16, 1, 3, 3\) vs \(16, 3, 3, 3\)"):
        load_backbone(wrong_channels, str(ckpt))
    with pytest.raises(PretrainedError, match="neither a checkpoint file nor a run"):
        load_backbone(smaller, "no-such-run")


def test_rotations_are_four_views_labelled_by_angle():
    from pipeline.data import DataError, rotations

    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).reshape(2, 1, 3, 3)
    x, y = rotations(images)
    assert x.shape == (8, 1, 3, 3) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(x[2], torch.rot90(images[0], 1, dims=(1, 2)))
    assert torch.equal(x[4], images[0].flip(1).flip(2))  # 180 degrees
    with pytest.raises(DataError, match="square images"):
        rotations(torch.zeros(1, 1, 4, 6, dtype=torch.uint8))


def test_ssp_pretraining_job_then_fine_tuning_records_the_chain(spark, splits, tmp_path):
    from jobs import pretrain as pretrain_job

    pre = pretrain_job.main(["--splits", str(splits), "--epochs", "1", "--include-unlabeled", "--experiment",
                             "tests-ssp", "--set", f"train.runtime.run_dir={tmp_path}", "--set", "train.data.augment=none"])
    run = mlflow.get_run(pre["run_id"])
    assert run.data.tags["stage"] == "pretrain" and run.data.tags["method"] == "ssp_rotation"
    assert run.data.params["objective"] == "rotation" and run.data.params["ssp.unlabeled"] == "True"
    head = torch.load(next(tmp_path.rglob("checkpoint.pt")), weights_only=True)["model"]["head.weight"]
    assert head.shape[0] == 4  # the rotation head
    tuned = fit(cfg_for(splits, tmp_path / "ft", "ce", epochs=1, pretrained=pre["run_id"]))
    tuned_run = mlflow.get_run(tuned["run_id"])
    assert tuned_run.data.tags["stage"] == "ssp"
    assert tuned_run.data.params["provenance.pretrained_method"] == "ssp_rotation"


def test_rotation_objective_rejects_settings_that_do_not_apply():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="train.sampler.name=class_balanced"):
        resolve([str(ROOT / "conf/methods/ssp_rotation.yaml")], [("train.sampler.name", "class_balanced")])


def test_launch_config_has_absolute_paths_but_keeps_run_ids(tmp_path, monkeypatch):
    from pipeline.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt.pt").write_bytes(b"")
    cfg = resolve([], [("train.splits", "runs/lt"), ("train.runtime.run_dir", "runs/train"), ("train.pretrained", "ckpt.pt")])
    out = with_absolute_paths(cfg).train
    assert out.splits == str(tmp_path / "runs/lt") and out.runtime.run_dir == str(tmp_path / "runs/train")
    assert out.pretrained == str(tmp_path / "ckpt.pt")
    run_id = resolve([], [("train.pretrained", "0123abcd")])
    assert with_absolute_paths(run_id).train.pretrained == "0123abcd"
    assert cfg.train.splits == "runs/lt"  # the original is not changed
