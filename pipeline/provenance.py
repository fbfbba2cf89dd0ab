"""What travels with every result: code version, time, library versions."""
from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The commit of the project checkout, with '-dirty' if it has uncommitted changes; 'unknown' outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stamp() -> dict:
    import pyspark

    return {"git_commit": git_commit(), "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "spark_version": pyspark.__version__}
