"""The tracker on a shared SQLite store: runs that start at once (sweep children as Spark tasks)
create their experiment and log the same new data set at the same moment, and every one succeeds."""
import multiprocessing as mp
import uuid

import mlflow
import pytest

PROCESSES = 6


def _child(start, logged, experiment: str, results) -> None:
    from pipeline.tracking import Tracker

    try:
        start.wait()  # all create the (new) experiment at once
        tracker = Tracker(experiment, "child", {"test": "race"})
        logged.wait()  # ... then all look up, and insert, the same new data sets at once
        for name in ("labeled", "unlabeled", "test"):
            tracker.log_dataset(name, f"/data/{name}", name * 20, "training", 10)
        tracker.end()
        results.put("ok")
    except Exception as e:  # the parent reports it
        results.put(f"{type(e).__name__}: {str(e)[-400:]}")


@pytest.mark.processes
def test_runs_starting_at_once_share_one_experiment_and_one_data_set_record():
    from pipeline.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.search_experiments()  # the store exists (its tables made) before the runs start, as in a sweep
    ctx = mp.get_context("spawn")
    start, logged, results = ctx.Barrier(PROCESSES), ctx.Barrier(PROCESSES), ctx.Queue()
    experiment = f"tests-race-{uuid.uuid4().hex[:8]}"
    procs = [ctx.Process(target=_child, args=(start, logged, experiment, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * PROCESSES, outcomes
    runs = mlflow.search_runs(experiment_names=[experiment])
    assert len(runs) == PROCESSES and set(runs.status) == {"FINISHED"}
    datasets = {(d.dataset.name, d.dataset.digest) for r in runs.run_id
                for d in mlflow.get_run(r).inputs.dataset_inputs}
    assert datasets == {(n, (n * 20)[:36]) for n in ("labeled", "unlabeled", "test")}  # one record each, shared
