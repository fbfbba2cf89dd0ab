"""The real cluster on loopback (bench/cluster.sh): a standalone master and two workers, an MLflow
server, a worker SIGKILLed during an ingest, then ingest -> splits -> SSP -> training (2 processes on
the executors) -> streaming pseudo-labels -> semi-supervised training. About 6 minutes: selected with
`pytest -m cluster` (and by `make test-all`), not by `make test`."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.cluster
def test_the_jobs_run_on_a_standalone_cluster_and_an_ingest_survives_losing_a_worker(tmp_path):
    run = subprocess.run(["bash", "bench/cluster.sh", str(tmp_path / "cluster")], cwd=ROOT, capture_output=True,
                         text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "fault check passed: 12,000 files in, 11999 written + 1 rejected" in run.stdout
    assert "cluster check passed: 4 runs" in run.stdout


def test_the_cluster_script_refuses_a_folder_it_did_not_make_and_deletes_nothing(tmp_path):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "keep.txt").write_text("mine")
    run = subprocess.run(["bash", "bench/cluster.sh", str(home)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and f"{home} exists and was not made by this script" in run.stderr
    assert (home / "notes" / "keep.txt").read_text() == "mine" and sorted(p.name for p in home.iterdir()) == ["notes"]
