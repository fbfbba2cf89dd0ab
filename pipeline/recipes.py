"""Where the training recipes, stage settings and data set configs live (conf/methods/, conf/stages/,
conf/datasets/) and the YAML layers they add to a job's config."""
from __future__ import annotations

from pipeline.config import Config, ConfigError
from pipeline.provenance import PROJECT_ROOT

RECIPES = PROJECT_ROOT / "conf" / "methods"  # conf/methods/<name>.yaml: the training recipes
SEMI_STAGE = PROJECT_ROOT / "conf" / "stages" / "semi.yaml"  # semi-supervised defaults of the reference
DATASETS = PROJECT_ROOT / "conf" / "datasets"  # conf/datasets/<name>.yaml: a built-in data set's own config


def check_recipes(names: list[str], where: str = "") -> None:
    """Refuse a recipe name that has no conf/methods/<name>.yaml, listing the known ones."""
    unknown = [n for n in names if not (RECIPES / f"{n}.yaml").is_file()]
    if unknown:
        known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise ConfigError(f"{where}no recipe {unknown[0]!r} ({RECIPES / unknown[0]}.yaml); known: {', '.join(known)}")


def recipe_layers(cfg: Config) -> list[str]:
    """The YAML of the recipe ``train.method`` names (none when it names none): a ``layers`` for resolve."""
    return [str(RECIPES / f"{cfg.train.method}.yaml")] if cfg.train.method else []


def semi_layers(cfg: Config) -> list[str]:
    """The recipe, then the semi-supervised stage's settings (batch 256, union batches)."""
    return recipe_layers(cfg) + [str(SEMI_STAGE)]


def dataset_layers(cfg: Config) -> list[str]:
    """The built-in data set's own config (conf/datasets/<ingest.dataset>.yaml: its normalisation, the
    train settings its data records), below the user's --config files: ``--dataset digits`` alone
    ingests digits with what training on them needs. None for imagefolder or manifest data."""
    own = DATASETS / f"{cfg.ingest.dataset}.yaml"
    return [str(own)] if own.is_file() else []
