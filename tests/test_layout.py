"""The project's own files agree with each other: README commands, CI, Makefile, compose."""
import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci/run").read_text()
    targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M)
    assert {"demo", "test", "venv", "bench-ingest"} <= set(targets)


def test_top_level_layout():
    for path in ("jobs", "pipeline", "models", "streaming", "conf", "tests", "bench", "docker-compose.yml",
                 "README.md", "pyproject.toml", "Makefile", ".ci/run"):
        assert (ROOT / path).exists(), path


def test_jobs_import_only_the_library():
    """spark-submit puts only jobs/ on sys.path: a job importing another job fails there."""
    import ast

    for job in sorted((ROOT / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(job.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("jobs"), f"{job.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("jobs") for a in node.names), job.name


def test_every_library_package_is_installed_by_pyproject():
    """A package missing from [tool.setuptools] packages works in the editable checkout and is absent
    from a plain `pip install .` (a wheel, an image): every folder with an __init__.py is listed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("pipeline", "models", "streaming")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed, f"unlisted: {sorted(found - listed)}, listed but gone: {sorted(listed - found)}"


def test_the_demo_writes_only_under_runs(tmp_path):
    """`make demo RUNS=DIR`: every output, checkpoint and comparison of the chain lies under DIR (the
    MLflow store too: the recipe exports MLFLOW_TRACKING_URI as the one `make mlflow-ui RUNS=DIR` opens)."""
    runs = tmp_path / "elsewhere"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # a user's shell
    text = subprocess.run(["make", "-n", "demo", f"RUNS={runs}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.replace("\\\n", " ")
    jobs = [line for line in text.splitlines() if "jobs/" in line]
    assert len(jobs) == 10
    outputs = re.findall(r"(?:--out|--data|--splits|--result|--input|--pseudo-labels|run_dir=) ?(\S+)", text)
    assert outputs and all(p.startswith(str(runs)) for p in outputs), outputs
    trainers = [line for line in jobs if re.search(r"jobs/(train|pretrain|train_semi)\.py", line)]
    assert len(trainers) == 6 and all(f"train.runtime.run_dir={runs}/train" in line for line in trainers)
    assert f"--out {runs}/compare/" in text
    store = f"sqlite:///{runs}/mlflow/mlflow.db"  # what `make mlflow-ui RUNS=DIR` opens
    assert f"demo: writes under {runs}; MLflow store: {store}" in text.splitlines()  # the recipe's environment
