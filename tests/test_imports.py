"""Imports run one way: base <- parts <- tracking <- training loop | streaming <- launch <-
orchestration <- jobs. A module may import its own layer or lower ones, never a higher one, and no
import cycle exists (imports inside functions included)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    # 0 base: errors, config, files, schema, pure long-tail math
    {"pipeline", "pipeline.errors", "pipeline.registry", "pipeline.config", "pipeline.fs", "pipeline.schema",
     "pipeline.accel",
     "pipeline.provenance", "pipeline.images", "pipeline.longtail", "pipeline.longtail.profiles", "pipeline.safe_pickle", "pipeline.distributed",
     "pipeline.output", "pipeline.tables", "pipeline.records"},
    # 1 parts: architectures, losses, samplers, data, objectives, sources, formats, policies
    {"models", "models.base", "models.autoencoders", "models.resnet_cifar", "models.resnet_tv", "pipeline.losses",
     "pipeline.samplers", "pipeline.schedule", "pipeline.metrics", "pipeline.data", "pipeline.strong_augment",
     "pipeline.petastorm_loader",
     "pipeline.loaders", "pipeline.objectives", "pipeline.model_io", "pipeline.plots", "pipeline.sources",
     "pipeline.sources.cifar", "pipeline.sources.digits", "pipeline.sources.download", "pipeline.sources.imagefolder",
     "pipeline.sources.manifest", "pipeline.sources.svhn", "pipeline.recipes", "streaming",
     "pipeline.pseudolabel", "pipeline.pseudolabel.policies", "pipeline.pseudolabel.prior", "pipeline.pseudolabel.balance",
     "pipeline.pseudolabel.store", "pipeline.pseudolabel.state", "pipeline.pseudolabel.books"},
    # 2 tracking and what reads runs back
    {"pipeline.tracking", "pipeline.pretrained", "pipeline.report", "pipeline.compare", "pipeline.run"},
    # 3 the training loop | streaming | the Spark data jobs
    {"pipeline.train", "pipeline.spark", "pipeline.ingest", "pipeline.longtail.splits", "streaming.score",
     "streaming.checks", "streaming.checkpoint", "streaming.pseudolabel", "streaming.dashboard"},
    # 4 launch
    {"pipeline.launch"},
    # 5 orchestration
    {"pipeline.semi", "pipeline.sweep", "pipeline.cli"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def modules() -> dict[str, Path]:
    found = {}
    for package in ("pipeline", "models", "streaming"):
        for path in (ROOT / package).rglob("*.py"):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:  # the longest known prefix: ``from pipeline import fs`` is pipeline.fs
            parts = name.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in known:
                    out.add(".".join(parts[:n]))
                    break
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(p, set(found)) - {m} for m, p in found.items()}


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYER), f"unlayered: {sorted(set(modules()) - set(LAYER))}, " \
                                         f"gone: {sorted(set(LAYER) - set(modules()))}"


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} (layer {LAYER[m]}) imports {t} (layer {LAYER[t]})"
              for m, targets in graph().items() for t in targets if LAYER[t] > LAYER[m]]
    assert not upward, "\n".join(upward)


def test_imports_have_no_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_the_training_loop_and_the_stream_do_not_import_each_other():
    """Both sit on layer 3 side by side: what they share (the pseudo-label format) lives below them."""
    g = graph()
    training, streaming = {"pipeline.train"}, {m for m in LAYERS[3] if m.startswith("streaming.")}
    crossing = [f"{m} imports {t}" for m in training | streaming for t in g[m]
                if (m in training and t in streaming) or (m in streaming and t in training)]
    assert not crossing, crossing


# Imports inside a function, each for a measured reason (seconds to import on the 2-core dev machine,
# `python -X importtime -c "import X"`): a job that does not need the module does not pay for it.
LAZY = {
    "mlflow": "2.5 s; only jobs that track import it",
    "torch": "2.8 s; the ingest and splits drivers never need it",
    "torchvision": "with torch; only the torchvision models and downloads",
    "pipeline.accel": "imports torch (2.0 s): the stream's driver stays torch-free until it scores",
    "pipeline.distributed": "imports torch (2.0 s)",
    "pipeline.model_io": "imports torch and models (1.7 s): tracking loads a model only when asked",
    "pipeline.pretrained": "imports torch (1.8 s)",
    "petastorm": "1.0 s; only the petastorm loader",
    "sklearn": "1.6 s; only the digits source",
    "scipy": "0.6 s; only DARP and the SVHN source",
    "matplotlib": "0.7 s; only the plots",
    "pipeline.plots": "imports matplotlib (0.6 s): only runs that draw",
    "pandas": "0.5 s; tracking's run search only (tracking is imported by every job)",
    "dash": "0.45 s; only the dashboard's server",
    "plotly": "with dash; only the dashboard's figures",
    "pyspark": "0.3-0.6 s; the training processes TorchDistributor starts never touch Spark",
    # petastorm ships this decode function to its worker processes: it must carry its own imports
    "numpy": "pipeline/petastorm_loader.py's decode runs in petastorm's workers, self-contained",
    "pipeline.images": "pipeline/petastorm_loader.py's decode runs in petastorm's workers, self-contained",
}


def test_imports_inside_functions_are_only_the_measured_heavy_ones():
    found = {}
    for path in sorted(p for top in ("pipeline", "streaming", "models", "jobs") for p in (ROOT / top).rglob("*.py")):
        for f in ast.walk(ast.parse(path.read_text())):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [f"{node.module}.{a.name}" if node.module == "pipeline" else node.module for a in node.names])
                    for name in names:
                        if not any(name == k or name.startswith(k + ".") for k in LAZY):
                            found[f"{path.relative_to(ROOT)}:{node.lineno}"] = name
    assert not found, f"import these at the top of their module (or measure why not and add it to LAZY): {found}"


def test_the_ingest_and_splits_jobs_load_neither_torch_nor_mlflow():
    import subprocess
    import sys

    check = "import sys, jobs.ingest, jobs.longtail; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
