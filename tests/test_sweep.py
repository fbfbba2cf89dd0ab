"""Sweeps: the grid file and its children (pure), then a real sweep on local Spark whose children
run as Spark tasks, one failing on purpose, and reruns that skip what finished; the comparison
plots and the per-run HTML report it leaves in MLflow."""
import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.records import read_result
from pipeline.sweep import children, load_grid
from tests.helpers import manifest_record, submit_command

ROOT = Path(__file__).resolve().parent.parent


def write_grid(path: Path, **grid) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


GRID = dict(name="g", data="/somewhere/digits", config=[str(ROOT / "conf/experiments/digits_lt10.yaml")],
            methods=["ce", "ldam_drw"], imbalance_ratios=[10, 100], seeds=[0, 1])


def test_grid_expands_methods_ratios_seeds_and_applies_overrides_to_matching_children_only(tmp_path):
    grid = load_grid(str(write_grid(tmp_path / "g.yaml", **GRID, set={"train.epochs": 3},
                                    overrides=[{"match": {"method": "ldam_drw", "imbalance_ratio": 100},
                                                "set": {"train.optim.lr": 0.05, "train.seed": 99}}])))
    kids = {c.key: c for c in children(grid)}
    assert len(kids) == 8 and "ldam_drw/rho=100/seed=1" in kids
    tuned, plain = kids["ldam_drw/rho=100/seed=1"].cfg.train, kids["ldam_drw/rho=10/seed=1"].cfg.train
    assert (tuned.optim.lr, plain.optim.lr) == (0.05, 0.1) and tuned.epochs == plain.epochs == 3
    assert tuned.seed == 1  # the child's own axes win over any override
    assert tuned.loss.name == "ldam" and kids["ce/rho=10/seed=0"].cfg.train.loss.name == "ce"  # each child's recipe
    assert tuned.splits.endswith("splits/r100") and tuned.tracking.experiment == "digits-lt10"  # the grid's config layer
    # the config hash (what a rerun compares) differs exactly where the resolved config does
    assert kids["ldam_drw/rho=100/seed=1"].config_sha != kids["ldam_drw/rho=10/seed=1"].config_sha
    again = {c.key: c.config_sha for c in children(grid)}
    assert again == {k: c.config_sha for k, c in kids.items()}


@pytest.mark.parametrize("change, message", [
    ({"methods": ["ce", "no_such_recipe"]}, "no recipe 'no_such_recipe'"),
    ({"seeds": []}, "sweep key 'seeds' is required"),
    ({"overrides": [{"match": {"lr": 1}, "set": {}}]}, "overrides[0].match: unknown key 'lr'"),
    ({"execution": "threads"}, "config key 'execution'"),
    ({"methodz": ["ce"]}, "unknown config key 'methodz'"),
])
def test_a_bad_grid_names_the_file_and_the_key(tmp_path, change, message):
    path = write_grid(tmp_path / "bad.yaml", **{**GRID, **change})
    with pytest.raises(ConfigError) as e:
        load_grid(str(path))
    assert message in str(e.value) and "bad.yaml" in str(e.value)


def test_a_bad_child_config_names_the_child(tmp_path):
    grid = load_grid(str(write_grid(tmp_path / "g.yaml", **GRID, set={"train.epochs": "many"})))
    with pytest.raises(ConfigError, match=r"sweep g \(ce/rho=10/seed=0\): config key 'train.epochs'"):
        children(grid)


def test_sweep_runs_children_as_spark_tasks_records_a_failed_child_and_reruns_only_what_did_not_finish(
        base, tmp_path, mlflow_store):
    grid = dict(name="tiny", data=str(base["root"] / "digits"), out=str(tmp_path / "out"),
                config=[str(ROOT / "conf/experiments/digits_lt10.yaml")], methods=["ce", "focal"],
                imbalance_ratios=[10], seeds=[0, 1],
                set={"train.epochs": 2, "train.tracking.experiment": "tests-sweep", "train.runtime.run_dir": str(tmp_path / "train"),
                     "longtail.labeled_max": 40},
                overrides=[{"match": {"method": "focal", "seed": 1}, "set": {"train.optim.lr": 1.0e+30}}])  # diverges
    path = write_grid(tmp_path / "tiny.yaml", **grid)
    command, env = submit_command("jobs/sweep.py", "--grid", path, "--result", tmp_path / "r1.json")
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "4 children to run (4 as Spark tasks, 0 through TorchDistributor)" in first.stdout
    r1 = read_result("sweep", str(tmp_path / "r1.json")).to_dict()
    assert sorted(r1["finished"]) == ["ce/rho=10/seed=0", "ce/rho=10/seed=1", "focal/rho=10/seed=0"]
    assert list(r1["failed"]) == ["focal/rho=10/seed=1"] and "diverged" in r1["failed"]["focal/rho=10/seed=1"]

    client = mlflow.tracking.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["tests-sweep"], filter_string="tags.sweep = 'tiny'")
    runs = runs[runs["tags.stage"] != "sweep"]  # the children, without the parent
    assert len(runs) == 4 and set(runs["tags.mlflow.parentRunId"]) == {r1["parent_run_id"]}
    failed = runs[runs.status == "FAILED"]
    assert failed["tags.sweep_child"].tolist() == ["focal/rho=10/seed=1"] and "diverged" in failed["tags.error"].iloc[0]
    parent = client.get_run(r1["parent_run_id"])
    assert parent.info.status == "FAILED" and parent.data.metrics["children_failed"] == 1
    assert {"compare/compare.md", "compare/compare.csv", "compare/accuracy_vs_ratio_digits.png",
            "compare/per_class_digits_r10.png", "compare/confusion_digits_r10.png"} <= {
        a.path for a in client.list_artifacts(r1["parent_run_id"], "compare")}
    table = (tmp_path / "out/compare/compare.md").read_text()
    assert "| digits | 10 | ce | base | 2 |" in table and "| digits | 10 | focal | base | 1 |" in table

    # each finished child carries its self-contained report
    child = runs[runs.status == "FINISHED"].run_id.iloc[0]
    report = mlflow.artifacts.load_text(f"runs:/{child}/report.html")
    assert report.count('src="data:image/png;base64,') == 3 and 'src="http' not in report  # nothing fetched
    assert "top-5 (%)" in report and report.count("<tr><td class=l>") >= 10  # a row per digit class
    assert "pipeline.tracking.load_model" in report and "manifest sha256" in report

    # Rerun, the diverging child fixed and failing another way (before it can open its own run),
    # through TorchDistributor this time: the three finished children are skipped.
    grid["overrides"][0]["set"] = {"train.pretrained": str(tmp_path / "missing.pt")}
    write_grid(path, **grid, execution="distributor")
    from jobs import sweep as sweep_job

    with pytest.raises(SystemExit) as e:
        sweep_job.main(["--grid", str(path), "--result", str(tmp_path / "r2.json")])
    assert e.value.code == 1
    r2 = read_result("sweep", str(tmp_path / "r2.json")).to_dict()
    assert len(r2["skipped"]) == 3 and r2["parent_run_id"] == r1["parent_run_id"]
    assert "missing.pt" in r2["failed"]["focal/rho=10/seed=1"]
    recorded = client.get_run(r2["outcomes"][0]["run_id"])  # the sweep recorded the failure itself
    assert recorded.info.status == "FAILED" and recorded.data.tags["sweep_child"] == "focal/rho=10/seed=1"
    assert recorded.data.tags["mlflow.parentRunId"] == r1["parent_run_id"]

    grid["overrides"] = []
    write_grid(path, **grid, execution="distributor")
    r3 = sweep_job.main(["--grid", str(path)])
    assert r3["finished"] == ["focal/rho=10/seed=1"] and len(r3["skipped"]) == 3 and not r3["failed"]
    assert client.get_run(r1["parent_run_id"]).info.status == "FINISHED"
    assert "| digits | 10 | focal | base | 2 |" in (tmp_path / "out/compare/compare.md").read_text()


def test_a_child_whose_training_process_is_killed_is_a_failed_outcome_not_a_failed_sweep(base, tmp_path):
    """What the kernel's out-of-memory killer does to a training: SIGKILL. The Spark task that ran
    the child survives (the training has a process of its own) and reports the child as failed."""
    import threading
    import time

    from pipeline.config import resolve
    from pipeline.launch import run_in_task
    from pipeline.tracking import tracking_uri

    cfg = resolve([str(ROOT / "conf/methods/ce.yaml"), str(ROOT / "conf/experiments/digits_lt10.yaml")],
                  [("train.splits", str(base["splits"])), ("train.epochs", "500"),
                   ("train.runtime.run_dir", str(tmp_path / "train")), ("train.tracking.experiment", "tests-sweep-kill")])
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(run_in_task(("ce/rho=10/seed=0", cfg), tracking_uri(), 1)))
    worker.start()
    deadline = time.time() + 120
    while not mlflow.search_runs(experiment_names=["tests-sweep-kill"]).shape[0]:  # training has begun
        assert time.time() < deadline and worker.is_alive(), outcome
        time.sleep(0.5)
    import os
    import signal

    # this process's own children (not pgrep -f, which would match any sweep on the machine)
    kids = {int(k) for t in os.listdir(f"/proc/{os.getpid()}/task")
            for k in open(f"/proc/{os.getpid()}/task/{t}/children").read().split()}
    pids = [k for k in kids if b"pipeline.launch" in open(f"/proc/{k}/cmdline", "rb").read()]
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    worker.join(60)
    assert outcome["status"] == "FAILED" and outcome["key"] == "ce/rho=10/seed=0"
    assert "the training process was killed by signal 9 before reporting a result" in outcome["error"]


def test_a_finished_child_is_stale_once_its_splits_or_ingest_change(tmp_path):
    from pipeline.sweep import data_identity

    grid = load_grid(str(write_grid(tmp_path / "g.yaml", **{**GRID, "out": str(tmp_path / "out")})))
    child = children(grid)[0]
    manifest = Path(child.cfg.train.splits) / "manifest.json"
    manifest.parent.mkdir(parents=True)

    def sha(split_sha, ingest_sha):
        manifest.write_text(json.dumps(manifest_record(manifest_sha256=split_sha,
                                                       source={"data": "/d", "dataset": "digits",
                                                               "ingest_sha256": ingest_sha})))
        return data_identity(child).config_sha

    first = sha("a" * 64, "b" * 64)
    assert sha("a" * 64, "b" * 64) == first  # the same data: the finished child is reused
    assert sha("c" * 64, "b" * 64) != first  # new splits (other long-tail settings)
    assert sha("a" * 64, "d" * 64) != first  # a new ingest under the same splits settings


def test_a_training_child_does_not_outlive_its_killed_task(tmp_path):
    """The task's Python worker (here a stand-in process) is SIGKILLed: its child goes with it."""
    import os
    import signal
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    script = tmp_path / "worker.py"
    script.write_text("import os, sys\nfrom pipeline.launch import run_child\n"
                      f"run_child([sys.executable, '-c', {child_code!r}], dict(os.environ))\n")
    worker = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.time() < deadline, "the child did not start"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:  # a zombie (reaped by init soon) is dead too
            if f.read().split()[2] == "Z":
                return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the training child outlived its task")


def test_runs_per_gpu_trains_that_many_children_at_once_on_one_gpu_address(base, tmp_path, mlflow_store):
    """Spark's own GPU scheduling, without a GPU: a local cluster whose worker's discovery script
    reports one address; with runs_per_gpu 4 each child task asks for a quarter of it, so the four
    children run at the same time, each pinned to address 0 and tagged with it. ``train.runtime.device=cpu``
    is the grid's explicit choice here (auto would make the children require the GPU they cannot see)."""
    script = tmp_path / "one-gpu.sh"
    script.write_text('#!/usr/bin/env bash\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(0o755)
    grid = dict(name="shared-gpu", data=str(base["root"] / "digits"), out=str(tmp_path / "out"),
                config=[str(ROOT / "conf/experiments/digits_lt10.yaml")], methods=["ce"], imbalance_ratios=[10],
                seeds=[0, 1, 2, 3], execution="tasks", runs_per_gpu=4,
                set={"train.epochs": 1, "train.tracking.experiment": "tests-sweep-gpu", "train.runtime.device": "cpu",
                     "train.runtime.run_dir": str(tmp_path / "train"), "longtail.labeled_max": 40,
                     "train.tracking.system_metrics": False})
    path = write_grid(tmp_path / "gpu.yaml", **grid)
    command, env = submit_command("jobs/sweep.py", "--grid", path, "--result", tmp_path / "r.json")
    at = command.index("local[2]")
    command[at:at + 1] = ["local-cluster[1,4,1024]", "--conf", "spark.worker.resource.gpu.amount=1",
                          "--conf", f"spark.worker.resource.gpu.discoveryScript={script}",
                          "--conf", "spark.executor.resource.gpu.amount=1",
                          "--conf", f"spark.executor.resource.gpu.discoveryScript={script}"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    outcomes = read_result("sweep", str(tmp_path / "r.json")).outcomes
    assert len(outcomes) == 4 and {o["status"] for o in outcomes} == {"FINISHED"}
    assert {o["gpu_address"] for o in outcomes} == {"0"}
    assert max(o["started"] for o in outcomes) < min(o["ended"] for o in outcomes)  # all four at once
    runs = mlflow.search_runs(experiment_names=["tests-sweep-gpu"], filter_string="tags.sweep = 'shared-gpu'")
    children_runs = runs[runs["tags.stage"] != "sweep"]
    assert len(children_runs) == 4 and set(children_runs["tags.gpu_address"]) == {"0"}

    # on local[2] there is no GPU to share: refused before any work, naming the setting
    command, env = submit_command("jobs/sweep.py", "--grid", path)
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "spark.executor.resource.gpu.amount" in refused.stdout + refused.stderr


def test_a_pinned_child_sees_only_its_gpu_and_requires_it_unless_told_cpu():
    from pipeline.config import resolve
    from pipeline.launch import pinned

    cfg = resolve([str(ROOT / "conf/experiments/digits_lt10.yaml")])
    child, env = pinned(cfg, ["3"])
    assert env == {"CUDA_VISIBLE_DEVICES": "3"} and child.train.tracking.tags["gpu_address"] == "3"
    assert child.train.runtime.device == "cuda"  # auto would have fallen back to the CPU silently
    explicit = resolve([str(ROOT / "conf/experiments/digits_lt10.yaml")], [("train.runtime.device", "cpu")])
    assert pinned(explicit, ["3"])[0].train.runtime.device == "cpu"


def test_a_split_list_in_a_sweep_over_several_ratios_is_refused(tmp_path):
    from pipeline.sweep import ensure_splits

    grid = load_grid(str(write_grid(tmp_path / "g.yaml", **GRID, set={"longtail.labeled_ids": "list.txt",
                                                                       "longtail.labeled_max": None})))
    with pytest.raises(ConfigError, match="the 2 imbalance_ratios of the grid would all train on the same images"):
        ensure_splits(None, grid, [], [])
