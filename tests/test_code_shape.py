"""Every function of the library and the jobs fits on one screen, so that a reader sees a whole
step at once (the training loop included): long functions are split where a step ends."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREEN = 60  # lines, signature and docstring included


def functions():
    for package in ("pipeline", "models", "streaming", "jobs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_every_function_fits_on_one_screen():
    found = dict(functions())
    assert "pipeline/train.py" in " ".join(found) and any(k.endswith(" _fit") for k in found)  # the walk sees the loop
    long = {name: lines for name, lines in found.items() if lines > SCREEN}
    assert not long, f"functions longer than {SCREEN} lines: {long}"
