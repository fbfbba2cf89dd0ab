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
