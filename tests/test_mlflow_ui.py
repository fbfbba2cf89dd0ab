"""What a user sees in the MLflow UI, for real: an `mlflow server` on loopback, a training job and a
pseudo-label stream tracked into it through spark-submit, then headless Chromium on the UI. The
experiment opens on training runs (its kind), a run shows the data sets it used, the registered
model has its alias, and the stream recorded the version it resolved."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.records import Manifest, Stream, read_result
from tests.helpers import ROOT, submit_command
from tests.test_dashboard import browser, free_port, wait

pytestmark = pytest.mark.browser


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path / 'ui.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                            stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            return False

    wait(up, "the MLflow server", 120)
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def submit(url, *args):
    command, env = submit_command(*args)
    run = subprocess.run(command, cwd=ROOT, env={**env, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return run


def test_mlflow_ui_shows_training_runs_their_data_sets_and_the_registered_model(base, server, tmp_path):
    splits = base["splits"]
    submit(server, "jobs/train.py", "--splits", splits, "--method", "ce", "--epochs", "1", "--experiment", "tests-ui",
           "--register", "tests-ui-model", "--result", tmp_path / "train.json", "--set", "train.data.augment=none",
           "--set", "train.batch_size=32", "--set", f"train.runtime.run_dir={tmp_path / 'runs'}")
    result = read_result("train", str(tmp_path / "train.json")).to_dict()
    submit(server, "jobs/pseudolabel.py", "--model", "models:/tests-ui-model@candidate", "--input", splits / "unlabeled",
           "--out", tmp_path / "pl", "--max-files-per-trigger", "6")

    experiment = get(server, "experiments/get-by-name?experiment_name=tests-ui")["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    run = get(server, f"runs/get?run_id={result['run_id']}")["run"]
    inputs = {i["dataset"]["name"]: i for i in run["inputs"]["dataset_inputs"]}
    manifest = Manifest.read(str(splits))
    assert set(inputs) == {"labeled", "test"}
    assert inputs["labeled"]["dataset"]["digest"] == manifest.ids_sha256["labeled"][:36]
    version = get(server, "registered-models/alias?name=tests-ui-model&alias=candidate")["model_version"]
    assert version["run_id"] == result["run_id"] and result["registered_model"].endswith(f"/{version['version']}")
    stream = Stream.read(str(tmp_path / "pl"))
    assert stream.model_version == f"tests-ui-model/{version['version']}"
    assert stream.model_uri == f"runs:/{result['run_id']}/model"

    driver = browser()
    try:
        # MLflow 3's UI opens on its GenAI view unless the URL asks for the model-training one
        driver.get(f"{server}/#/experiments/{experiment['experiment_id']}?workflowType=machine_learning")
        run_name = run["info"]["run_name"]
        wait(lambda: run_name in driver.page_source, "the run in the experiment's runs table", 90)
        assert "Model registry" in driver.page_source  # the model-training side bar, not GenAI's
        wait(lambda: "labeled" in driver.page_source, "the Dataset column naming the labeled split", 60)
        shot = Path(os.environ.get("MLFLOW_SCREENSHOT", tmp_path / "mlflow.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        time.sleep(1)  # let the table finish laying out for the picture
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        driver.get(f"{server}/#/models/tests-ui-model")
        wait(lambda: "candidate" in driver.page_source, "the registered model page with its alias", 60)
    finally:
        driver.quit()
