"""The typed, layered config: defaults < YAML files (with extends) < flags and --set, in order."""
import re
from pathlib import Path

import pytest

from pipeline.cli import JobParser
from pipeline.config import Config, ConfigError, dump, resolve

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_defaults_yaml_is_the_dump_of_the_code_defaults():
    text = (CONF / "defaults.yaml").read_text()
    assert text.split("\n", 1)[1] == dump(Config()), "regenerate with: python -m pipeline.config > conf/defaults.yaml"


def test_every_shipped_yaml_resolves():
    from pipeline.sweep import children, load_grid

    for path in sorted(CONF.rglob("*.yaml")):
        if path.parent.name == "sweeps":  # sweep grids: each child's config must resolve
            assert children(load_grid(str(path)))
        else:
            resolve([str(path)])


def test_layers_apply_in_order_and_extends_is_relative_to_the_file():
    cfg = resolve([str(CONF / "experiments/cifar10_lt100_ssl.yaml")], [("longtail.seed", "3")])
    assert cfg.ingest.dataset == "imagefolder" and cfg.ingest.image_size == [32, 32]  # from datasets/
    assert cfg.longtail.imbalance_ratio == 100.0 and cfg.longtail.labeled_max == 1500
    assert cfg.longtail.seed == 3


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'longtail.imbalance_ration'.*imbalance_ratio"):
        resolve([], [("longtail.imbalance_ration", "10")])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        resolve([], [("trian.epochs", "1")])


def test_a_flat_train_key_of_before_the_sections_names_its_new_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.lr' has moved: it is 'train.optim.lr' now"):
        resolve([], [("train.lr", "0.05")])
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  self_training_rounds: 2\n")
    with pytest.raises(ConfigError, match=r"'train.self_training_rounds' has moved: it is 'train.semi.rounds' now.*old.yaml"):
        resolve([str(old)])


def test_a_named_section_takes_its_name_as_a_plain_value(tmp_path):
    cfg = resolve([], [("train.loss", "focal"), ("train.loss.focal_gamma", "2"), ("train.sampler", "class_balanced")])
    assert (cfg.train.loss.name, cfg.train.loss.focal_gamma, cfg.train.sampler.name) == ("focal", 2.0, "class_balanced")
    short = tmp_path / "short.yaml"
    short.write_text("train:\n  loss: ldam\n")
    assert resolve([str(short)]).train.loss.name == "ldam"
    with pytest.raises(ConfigError, match=r"train.loss.name.*expected str"):
        resolve([], [("train.loss", "[1, 2]")])
    with pytest.raises(ConfigError, match=r"config section 'train.optim'.*expected a mapping"):
        resolve([], [("train.optim", "0.1")])  # a section without a name takes no plain value


def test_each_training_part_gets_its_own_section():
    import dataclasses

    from pipeline.config import LossConfig, SamplerConfig, TrainConfig

    cfg = resolve([str(CONF / "methods/resample_cb.yaml")], [("train.sampler.cb_beta", "0.99")])
    assert isinstance(cfg.train.loss, LossConfig) and isinstance(cfg.train.sampler, SamplerConfig)
    assert cfg.train.sampler.cb_beta == 0.99 and cfg.train.loss.cb_beta == 0.9999  # one part's beta, not both
    sections = [f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.default_factory)]
    assert sections == ["optim", "schedule", "loss", "sampler", "data", "ssp", "ae", "semi", "runtime", "tracking"]


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  datset: cifar10\n")
    with pytest.raises(ConfigError, match=r"'ingest.datset'.*bad.yaml"):
        resolve([str(bad)])


@pytest.mark.parametrize("key,value,message", [
    ("longtail.imbalance_ratio", "abc", "expected float, got str"),
    ("longtail.seed", "1.5", "expected int, got float"),
    ("longtail.seed", "true", "expected int, got bool"),
    ("ingest.overwrite", "3", "expected bool, got int"),
    ("longtail.imbalance_type", "linear", r"'linear' is not one of \['exp', 'step', 'none'\]"),
    ("ingest.image_size", "32x32", "expected a list"),
    ("ingest.image_size", "[32, big]", r"\[1\]': expected int, got str"),
])
def test_wrong_types_fail_with_the_key_name(key, value, message):
    with pytest.raises(ConfigError, match=rf"'{key}.*{message}"):
        resolve([], [(key, value)])


def test_strings_are_taken_verbatim_and_ints_widen_to_float():
    cfg = resolve([], [("spark.master", "local[2]"), ("ingest.split", "yes"), ("longtail.imbalance_ratio", "50")])
    assert cfg.spark.master == "local[2]" and cfg.ingest.split == "yes"
    assert cfg.longtail.imbalance_ratio == 50.0 and isinstance(cfg.longtail.imbalance_ratio, float)


def test_cross_field_checks_name_the_key():
    with pytest.raises(ConfigError, match="longtail.imbalance_ratio must be >= 1"):
        resolve([], [("longtail.imbalance_ratio", "0.5")])
    with pytest.raises(ConfigError, match="longtail.unlabeled_ratio"):
        resolve([], [("longtail.unlabeled_ratio", "0")])
    with pytest.raises(ConfigError, match="train.eval_every must be >= 1, got 0"):
        resolve([], [("train.eval_every", "0")])



@pytest.mark.parametrize("key, value, message", [
    ("longtail.seed", "-1", "longtail.seed must be >= 0"),
    ("train.seed", "-1", "train.seed must be >= 0"),
    ("ingest.seed", "-3", "ingest.seed must be >= 0"),
    ("spark.shuffle_partitions", "-2", "spark.shuffle_partitions must be >= 1, got -2"),
])
def test_out_of_range_values_fail_in_one_line_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve([], [(key, value)])


@pytest.mark.parametrize("extends", ["5", "[a.yaml, 7]", "{a: b}"])
def test_an_extends_that_is_not_file_names_names_the_file(tmp_path, extends):
    layer = tmp_path / "exp.yaml"
    layer.write_text(f"extends: {extends}\n")
    with pytest.raises(ConfigError, match=rf"config file {re.escape(str(layer))}: extends must be a file name"):
        resolve([str(layer)])


def test_a_ratio_above_the_head_count_names_the_key_and_its_bound():
    from pipeline.longtail.splits import plan_counts

    cfg = resolve([], [("longtail.imbalance_ratio", "1.0e+300"), ("longtail.labeled_max", "5000")]).longtail
    with pytest.raises(ConfigError, match=r"longtail.imbalance_ratio=1e\+300 with a head class of 5000 images gives "
                                          r"9 of 10 classes no image; it can be at most 5000"):
        plan_counts([5000] * 10, cfg)
    cfg = resolve([], [("longtail.unlabeled_ratio", "-400"), ("longtail.unlabeled_max", "300")]).longtail
    with pytest.raises(ConfigError, match="longtail.unlabeled_ratio=-400 with a head class of 300 images"):
        plan_counts([5000] * 10, cfg)
    assert min(plan_counts([5000] * 10, resolve([], [("longtail.imbalance_ratio", "5000")]).longtail)[0]) == 1


def test_job_flags_and_set_apply_in_command_line_order():
    parser = JobParser("t")
    parser.flag("--seed", key="longtail.seed")
    parser.flag("--source", key="ingest.source", append=True)
    parser.flag("--image-size", key="ingest.image_size", nargs="+")
    parser.flag("--overwrite", key="ingest.overwrite", switch=True)
    _, cfg = parser.resolve(["--seed", "1", "--set", "longtail.seed=2", "--source", "a b.tgz", "--source", "c",
                             "--image-size", "32", "--overwrite"])
    assert cfg.longtail.seed == 2
    assert cfg.ingest.source == ["a b.tgz", "c"]
    assert cfg.ingest.image_size == [32, 32]  # one number means a square
    assert cfg.ingest.overwrite is True


def test_job_parser_exits_with_the_key_on_a_bad_value(capsys):
    parser = JobParser("t")
    parser.flag("--seed", key="longtail.seed")
    with pytest.raises(SystemExit) as e:
        parser.resolve(["--seed", "x"])
    assert e.value.code == 2
    assert "longtail.seed" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["longtail.imbalance_ratio", "longtail.unlabeled_ratio", "pseudolabel.interval_s",
                                 "train.optim.lr"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"'{key}': expected a finite number"):
        resolve([], [(key, value)])


def test_verbose_flag_turns_on_spark_info_logs():
    parser = JobParser("x")
    _, quiet = parser.resolve([])
    _, verbose = JobParser("x").resolve(["--verbose"])
    assert (quiet.spark.log_level, verbose.spark.log_level) == ("WARN", "INFO")


def test_a_split_list_and_a_head_count_together_are_refused():
    with pytest.raises(ConfigError, match="longtail.labeled_ids gives the labeled split itself: drop longtail.labeled_max"):
        resolve([], [("longtail.labeled_ids", "list.txt"), ("longtail.labeled_max", "100")])
    with pytest.raises(ConfigError, match="longtail.draw"):
        resolve([], [("longtail.draw", "legacy")])


def test_a_yaml_nested_past_the_parser_names_the_file(tmp_path):
    layer = tmp_path / "deep.yaml"
    layer.write_text("train: " + "[" * 100_000)
    with pytest.raises(ConfigError, match=rf"config file {re.escape(str(layer))}: invalid YAML: RecursionError"):
        resolve([str(layer)])


def test_splits_whose_data_set_recorded_train_settings_start_from_them_and_the_run_still_wins(tmp_path):
    """A plain ``jobs/train.py --splits`` on digits trains without crop and flip at batch 32 (8x8
    digits cropped and flipped at batch 128 end at chance); a --config file or --set still wins."""
    from pipeline.records import Manifest
    from tests.helpers import manifest_record

    splits = str(tmp_path / "splits")
    Manifest.from_dict(manifest_record(train_settings={"batch_size": 32, "data": {"augment": "none"}}), "m").write(splits)
    plain = resolve([], [("train.splits", splits)])
    assert plain.train.batch_size == 32 and plain.train.data.augment == "none"
    (tmp_path / "run.yaml").write_text("train:\n  batch_size: 64\n")
    layered = resolve([str(tmp_path / "run.yaml")], [("train.splits", splits), ("train.data.augment", "crop_flip")])
    assert layered.train.batch_size == 64 and layered.train.data.augment == "crop_flip"
    assert resolve([], []).train.batch_size == 128  # no splits: the defaults


def test_a_data_sets_train_settings_are_checked_where_it_declares_them(tmp_path):
    (tmp_path / "data.yaml").write_text("ingest:\n  train_settings:\n    batch_sise: 32\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'ingest.train_settings.batch_sise'; did you mean batch_size"):
        resolve([str(tmp_path / "data.yaml")])


def test_dataset_flag_brings_in_the_built_in_data_sets_own_config():
    from pipeline.recipes import dataset_layers

    parser = JobParser("ingest")
    parser.flag("--dataset", key="ingest.dataset")
    _, cfg = parser.resolve(["--dataset", "digits"], layers=dataset_layers)
    assert cfg.ingest.train_settings == {"batch_size": 32, "data": {"augment": "none"}}
    _, cfg = parser.resolve(["--dataset", "imagefolder"], layers=dataset_layers)
    assert cfg.ingest.train_settings == {}  # a folder of images has no config of its own
