"""Argument parsing shared by every job: ``--config FILE``, ``--set key=value`` and job flags that
are sugar for ``--set``. Flags and ``--set`` apply in command-line order, after the config files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from pipeline import fs
from pipeline.config import Config, ConfigError, get_key, resolve
from pipeline.errors import PipelineError
from pipeline.records import Record, RecordError
from pipeline.recipes import RECIPES, check_recipes, recipe_layers, semi_layers  # noqa: F401  (the jobs' layers)
from pipeline.spark import session

_OVERRIDES = "_overrides"
class _Override(argparse.Action):
    """Record ``(config_key, raw_value)`` in order; the config module parses and type-checks it."""

    def __init__(self, option_strings, dest, key=None, const=None, nargs=None, append=False, **kw):
        self.key, self.append = key, append
        super().__init__(option_strings, dest=_OVERRIDES, const=const, nargs=nargs, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, _OVERRIDES, None) or [])
        if self.key is None:  # --set key=value
            if "=" not in values:
                parser.error(f"--set expects key=value, got {values!r}")
            key, raw = values.split("=", 1)
            items.append((key.strip(), raw))
        elif self.const is not None:  # a switch such as --overwrite
            items.append((self.key, self.const))
        elif self.append:  # --source a --source b -> one list-valued override
            previous = [json.loads(raw) for key, raw in items if key == self.key]
            items = [(key, raw) for key, raw in items if key != self.key]
            items.append((self.key, json.dumps((previous[-1] if previous else []) + [values])))
        elif isinstance(values, list):  # --image-size 32 32 -> "[32, 32]"
            items.append((self.key, "[" + ", ".join(values) + "]"))
        else:
            items.append((self.key, values))
        setattr(namespace, _OVERRIDES, items)


class JobParser(argparse.ArgumentParser):
    def __init__(self, description: str):
        super().__init__(description=description,
                         epilog="Any config key can be set with --set section.key=value; "
                                "see conf/defaults.yaml for every key and its default.")
        self.add_argument("--config", action="append", default=[], metavar="FILE",
                          help="YAML config layer (repeatable; later files win)")
        self.add_argument("--set", action=_Override, metavar="KEY=VALUE", help="override one config key")
        self.add_argument("--result", metavar="FILE", help="also write the job's result (run id...) as JSON")
        self.flag("--verbose", key="spark.log_level", const="INFO", switch=False, nargs=0,
                  help="Spark's INFO log lines on the console (default: warnings and the job's own progress)")

    def flag(self, *names: str, key: str, switch: bool = False, **kw) -> None:
        """A flag that sets config ``key``; ``switch`` makes it a boolean that sets true."""
        if switch:
            self.add_argument(*names, action=_Override, key=key, const="true", nargs=0, **kw)
        else:
            self.add_argument(*names, action=_Override, key=key, **kw)

    def method_flag(self, exclude: tuple[str, ...] = ()) -> None:
        methods = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem not in exclude)
        self.flag("--method", key="train.method", help=f"a recipe: {', '.join(methods)}")

    def training_flags(self) -> None:
        """The flags every job that launches ``fit`` takes."""
        self.flag("--splits", key="train.splits", help="a jobs/longtail.py output directory")
        self.flag("--model", key="train.model")
        self.flag("--epochs", key="train.epochs")
        self.flag("--num-processes", key="train.runtime.num_processes")
        self.flag("--experiment", key="train.tracking.experiment", help="MLflow experiment")
        self.flag("--seed", key="train.seed")
        self.flag("--resume", key="train.runtime.resume", switch=True, help="continue from the run's last checkpoint")
        self.flag("--register", key="train.tracking.register", metavar="NAME",
                  help="register the model as a new version of NAME (alias train.tracking.register_alias: candidate)")

    def resolve(self, argv: list[str] | None = None, required: dict[str, str] | None = None,
                layers: Callable[[Config], list[str]] | None = None) -> tuple[argparse.Namespace, Config]:
        """Parse and resolve the config. ``required`` maps config keys that must be set to their flag;
        ``layers`` names YAML files chosen by the config itself (a method's recipe), which go in
        below the user's --config files and flags."""
        args = self.parse_args(argv)
        overrides = getattr(args, _OVERRIDES, None) or []
        try:
            cfg = resolve(args.config, overrides)
            extra = layers(cfg) if layers else []
            missing = [f for f in extra if not Path(f).is_file()]
            if missing:  # the layers a config chooses are its recipe's (pipeline.recipes)
                check_recipes([cfg.train.method] if cfg.train.method else [])
                raise ConfigError(f"config layer not found: {missing[0]}")
            if extra:
                cfg = resolve(extra + args.config, overrides)
        except ConfigError as e:
            self.exit(2, f"{self.prog}: config error: {e}\n")
        for key, flag in (required or {}).items():
            if get_key(cfg, key) in (None, "", []):
                self.exit(2, f"{self.prog}: {flag} is required (config key {key})\n")
        return args, cfg


def overrides_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (key, raw value) pairs of a parsed command line's flags and --set, in order: for a job
    that resolves several configs from one command line (jobs/sweep.py)."""
    return list(getattr(args, _OVERRIDES, None) or [])


def run_spark_job(cfg: Config, job: Callable, summary: Callable[[dict], str], result_file: str | None,
                  record: type[Record]) -> dict:
    """Start the SparkSession, run ``job(spark, cfg)``, check its result against ``record`` (its
    declared definition, pipeline/records.py), print its summary (and write the record to
    ``result_file``, for the next job of a chain). An expected failure (bad input, existing output,
    missing files) ends the job with a one-line message."""

    spark = session(cfg.spark)
    try:
        result = job(spark, cfg)
    except (PipelineError, FileNotFoundError) as e:
        fail(str(e))
    print(summary(result))
    data = json.loads(json.dumps(result, default=str))  # what the file will hold
    try:
        checked = record.from_dict(data, origin=f"the job's result ({record.__name__})")
    except RecordError as e:  # the work is done: keep what it gave beside, for a look, and say so
        if result_file:
            fs.write_json(f"{result_file}.unchecked", data)
        fail(f"{e}{f' (the result as the job gave it: {result_file}.unchecked)' if result_file else ''}")
    if result_file:
        checked.write(str(Path(result_file).parent), atomic=True, name=Path(result_file).name)
    return result


def fail(message: str, code: int = 1) -> None:
    """Stop a job with a one-line error a user can act on (no traceback for expected failures)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
