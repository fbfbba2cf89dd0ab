"""jobs/longtail.py on a real digits ingest: counts, disjointness, determinism, provenance."""
import json

import pytest

from jobs import ingest as ingest_job, longtail as longtail_job
from pipeline.longtail import class_counts
from tests.helpers import read_table


@pytest.fixture(scope="module")
def digits(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest") / "digits"
    ingest_job.main(["--dataset", "digits", "--out", str(out)])
    return out


def make(digits, out, *args):
    return longtail_job.main(["--data", str(digits), "--out", str(out), *map(str, args)])


def ids(path):
    return set(read_table(path).column("id").to_pylist())


def test_labeled_counts_follow_the_exp_profile_and_splits_are_disjoint(digits, tmp_path):
    m = make(digits, tmp_path / "s", "--imbalance-ratio", 10, "--labeled-max", 100, "--unlabeled-max", 20,
             "--unlabeled-ratio", -10, "--val-per-class", 3, "--seed", 1)
    assert m["class_counts"]["labeled"] == class_counts("exp", 100, 10, 10) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert m["class_counts"]["unlabeled"] == class_counts("exp", 20, 10, -10)  # reversed: tail-heavy pool
    assert m["class_counts"]["val"] == [3] * 10
    lab, unl, val, test = (ids(tmp_path / "s" / s) for s in ("labeled", "unlabeled", "val", "test"))
    assert not lab & unl and not lab & val and not unl & val and not (lab | unl | val) & test
    assert len(lab) == 403 and len(test) == 450
    unlabeled = read_table(tmp_path / "s" / "unlabeled")
    assert set(unlabeled.column("label").to_pylist()) == {None}  # hidden...
    truth = read_table(tmp_path / "s" / "unlabeled_truth")
    assert set(truth.column("id").to_pylist()) == unl  # ...but kept for evaluation
    assert set(read_table(tmp_path / "s" / "labeled").column("split").to_pylist()) == {"labeled"}


def test_same_inputs_and_seed_give_identical_ids_and_another_seed_does_not(digits, tmp_path):
    a = make(digits, tmp_path / "a", "--imbalance-ratio", 10, "--labeled-max", 100, "--seed", 3)
    b = make(digits, tmp_path / "b", "--imbalance-ratio", 10, "--labeled-max", 100, "--seed", 3)
    c = make(digits, tmp_path / "c", "--imbalance-ratio", 10, "--labeled-max", 100, "--seed", 4)
    assert a["ids_sha256"] == b["ids_sha256"] and a["manifest_sha256"] == b["manifest_sha256"]
    assert a["ids_sha256"]["labeled"] != c["ids_sha256"]["labeled"]
    assert a["ids_sha256"]["test"] == c["ids_sha256"]["test"]  # the test split is copied untouched


def test_default_pool_is_every_leftover_image_and_n_max_the_smallest_class(digits, tmp_path):
    m = make(digits, tmp_path / "s", "--imbalance-type", "none")
    ingest = json.loads((digits / "ingest.json").read_text())
    available = ingest["splits"]["train"]["class_counts"]
    assert m["class_counts"]["labeled"] == [min(available)] * 10
    assert [l + u for l, u in zip(m["class_counts"]["labeled"], m["class_counts"]["unlabeled"])] == available


def test_step_profile(digits, tmp_path):
    m = make(digits, tmp_path / "s", "--imbalance-type", "step", "--imbalance-ratio", 10, "--labeled-max", 100)
    assert m["class_counts"]["labeled"] == [100] * 5 + [10] * 5
    assert m["imbalance"]["many_medium_few"] == {"many": [], "medium": [0, 1, 2, 3, 4], "few": [5, 6, 7, 8, 9]}


def test_manifest_records_parameters_source_identity_and_split_hashes(digits, tmp_path):
    m = make(digits, tmp_path / "s", "--imbalance-ratio", 10, "--labeled-max", 100, "--seed", 5)
    on_disk = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert on_disk == m
    assert m["class_names"] == [str(d) for d in range(10)]
    assert m["params"]["imbalance_ratio"] == 10.0 and m["params"]["seed"] == 5
    assert m["source"]["dataset"] == "digits" and len(m["source"]["ingest_sha256"]) == 64
    assert set(m["ids_sha256"]) == {"labeled", "val", "unlabeled", "test"}
    assert m["git_commit"] and m["created_at"]


def test_asking_for_more_than_exists_fails_naming_the_class(digits, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make(digits, tmp_path / "s", "--labeled-max", 100, "--unlabeled-max", 100, "--unlabeled-ratio", 1)
    err = capsys.readouterr().err
    assert "class 0 (0) has" in err and "unlabeled 100" in err
    assert not (tmp_path / "s").exists()


def test_existing_splits_are_refused_without_overwrite(digits, tmp_path, capsys):
    make(digits, tmp_path / "s", "--labeled-max", 50)
    with pytest.raises(SystemExit):
        make(digits, tmp_path / "s", "--labeled-max", 60)
    assert "already exists" in capsys.readouterr().err
    make(digits, tmp_path / "s", "--labeled-max", 60, "--overwrite")
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["class_counts"]["labeled"][0] == 60


def test_data_that_is_not_an_ingest_output_is_named(spark, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make(tmp_path / "nothing", tmp_path / "s")
    assert "nothing is not an ingest output (no ingest.json)" in capsys.readouterr().err


def test_a_class_without_labeled_images_is_an_error_not_all_zero_counts(spark, tmp_path, capsys):
    from tests.helpers import image_bytes, write_tree

    tree = write_tree(tmp_path / "t", {"train/a/0.png": image_bytes(seed=0), "train/a/1.png": image_bytes(seed=1),
                                       "train/b/2.png": image_bytes(seed=2), "test/c/3.png": image_bytes(seed=3)})
    ingest_job.main(["--dataset", "imagefolder", "--source", str(tree), "--out", str(tmp_path / "i")])
    with pytest.raises(SystemExit):
        make(tmp_path / "i", tmp_path / "s", "--imbalance-ratio", 2)
    assert "class 'c' has no labeled images in split 'train'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
