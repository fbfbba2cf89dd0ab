"""The project's own files agree with each other: README commands, CI, Makefile, compose."""
import re
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
