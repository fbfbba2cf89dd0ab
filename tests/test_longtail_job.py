"""jobs/longtail.py on a real digits ingest: counts, disjointness, determinism, provenance."""
import json

import pytest

from jobs import ingest as ingest_job, longtail as longtail_job
from pipeline.longtail.profiles import class_counts
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


def test_split_rows_are_in_id_order_across_their_files(digits, tmp_path):
    make(digits, tmp_path / "s", "--imbalance-ratio", 10, "--labeled-max", 100, "--val-per-class", 3,
         "--set", "longtail.files_per_split=3")
    for split in ("labeled", "unlabeled", "val", "test"):
        order = read_table(tmp_path / "s" / split).column("id").to_pylist()
        assert order == sorted(order), split  # what a training indexes into, whatever Spark's partitioning


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
    # `--dataset digits` alone brought in conf/datasets/digits.yaml: what training on digits needs
    # travels with the splits, so a plain jobs/train.py --splits starts from it (tests/test_config.py)
    assert m["train_settings"] == {"batch_size": 32, "data": {"augment": "none"}}
    assert m["git_commit"] and m["created_at"]


def test_asking_for_more_than_exists_fails_naming_the_class(digits, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make(digits, tmp_path / "s", "--labeled-max", 100, "--unlabeled-max", 100, "--unlabeled-ratio", 1)
    err = capsys.readouterr().err
    assert "class 0 (0) has" in err and "unlabeled 100" in err
    assert not (tmp_path / "s").exists()


def test_existing_splits_are_refused_without_overwrite(digits, tmp_path, capsys):
    make(digits, tmp_path / "s", "--labeled-max", 50, "--imbalance-ratio", 10)
    with pytest.raises(SystemExit):
        make(digits, tmp_path / "s", "--labeled-max", 60, "--imbalance-ratio", 10)
    assert "already exists" in capsys.readouterr().err
    make(digits, tmp_path / "s", "--labeled-max", 60, "--imbalance-ratio", 10, "--overwrite")
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


def source_ids(digits, per_class):
    """The first ``per_class[c]`` train ids of each class of the ingest, in id order."""
    table = read_table(digits / "images")
    rows = sorted((r["id"], r["label"]) for r in table.select(["id", "label", "split"]).to_pylist()
                  if r["split"] == "train")
    return {c: [i for i, label in rows if label == c][:n] for c, n in enumerate(per_class)}


def test_a_split_list_is_the_labeled_split_and_the_rest_fills_val_and_the_pool(digits, tmp_path):
    chosen = source_ids(digits, [12, 6, 3, 2, 1, 1, 1, 1, 1, 1])
    lines = ["\ufeff# a published split (saved with a byte-order mark)", ""] + [f"{i} {c}" for c in chosen for i in chosen[c]]
    lines[2] = lines[2].split()[0]  # the class is optional...
    lines[3] = f"{lines[3].split()[0]} 0"  # ...an index, or a name (the digits' names are their indices)
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    m = make(digits, tmp_path / "s", "--labeled-ids", tmp_path / "list.txt", "--val-per-class", 2)
    assert ids(tmp_path / "s" / "labeled") == {i for c in chosen.values() for i in c}
    assert m["class_counts"]["labeled"] == [12, 6, 3, 2, 1, 1, 1, 1, 1, 1] and m["class_counts"]["val"] == [2] * 10
    lab, unl, val = (ids(tmp_path / "s" / s) for s in ("labeled", "unlabeled", "val"))
    ingest = json.loads((digits / "ingest.json").read_text())
    assert not lab & unl and not lab & val and not unl & val
    assert len(lab | unl | val) == sum(ingest["splits"]["train"]["class_counts"])
    assert m["imbalance"]["ratio_measured"] == 12.0 and len(m["params"]["labeled_ids_sha256"]) == 64


def test_a_split_list_enters_the_fingerprint_by_content_not_by_path(digits, tmp_path):
    chosen = source_ids(digits, [5] * 10)
    text = "".join(f"{i}\n" for c in chosen.values() for i in c)
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(text)
    (tmp_path / "c.txt").write_text(text.split("\n", 1)[1])  # one image fewer
    a, b, c = (make(digits, tmp_path / n, "--labeled-ids", tmp_path / f"{n}.txt") for n in "abc")
    assert a["manifest_sha256"] == b["manifest_sha256"] != c["manifest_sha256"]


@pytest.mark.parametrize("body, message", [
    ("{0}\n{1}\n{0}\n", "list.txt:3: '{0}' is listed twice (first on line 1)"),
    ("{0}\nno/such/image\n", "list.txt:2: 'no/such/image' is not a labeled image of split 'train' of the ingest "
                             "(1 of the 2 listed ids are not)"),
    ("{0} 7\n", "list.txt:1: '{0}' is listed as class '7' but the ingest labels it '0'"),
    ("{0} seven\n", "list.txt:1: class 'seven' is neither a class name nor an index below 10"),
    ("{0} 0 extra\n", "list.txt:1: expected 'ID [CLASS]', got 3 fields"),
    ("# nothing\n\n", "list.txt: the split list names no images"),
    ("\xff{0}\n", "list.txt: a split list must be UTF-8 text"),
    ("{0} \u00b2\n", "list.txt:1: class '\u00b2' is neither a class name nor an index below 10"),
    ("{0}\n{1}\n", "list.txt: the split list has no image of class '1' (9 such classes)"),
    (None, "longtail.labeled_ids: the split list "),
])
def test_a_bad_split_list_fails_naming_the_file_and_line(digits, tmp_path, capsys, body, message):
    chosen = source_ids(digits, [2])
    if body is not None:
        (tmp_path / "list.txt").write_bytes(body.format(*chosen[0]).encode("latin-1" if "\xff" in body else "utf-8"))
    with pytest.raises(SystemExit):
        make(digits, tmp_path / "s", "--labeled-ids", tmp_path / "list.txt")
    assert message.format(*chosen[0]) in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_imbalance_cifar_draw_keeps_the_reference_codes_images_of_a_cifar_ingest(spark, tmp_path):
    import numpy as np

    from pipeline.safe_pickle import loads
    from tests.helpers import write_cifar10

    archive = write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=40)
    ingest_job.main(["--dataset", "cifar10", "--source", str(archive), "--out", str(tmp_path / "i")])
    m = make(tmp_path / "i", tmp_path / "s", "--draw", "imbalance_cifar", "--labeled-max", 10,
             "--imbalance-ratio", 10, "--seed", 3)
    # The reference: the five batches in order, np.random.seed(3), per class shuffle and keep n_c.
    import tarfile
    with tarfile.open(archive) as tar:
        labels = np.array([y for b in range(1, 6) for y in loads(
            tar.extractfile(f"cifar-10-batches-py/data_batch_{b}").read())[b"labels"]])
    np.random.seed(3)
    kept = set()
    for c, n in enumerate(m["class_counts"]["labeled"]):
        positions = np.where(labels == c)[0]
        np.random.shuffle(positions)
        kept |= set(positions[:n].tolist())
    got = {(int(i.split("/")[0].rsplit("_", 1)[1]) - 1) * 40 + int(i.split("/")[1]) for i in ids(tmp_path / "s" / "labeled")}
    assert got == kept and m["params"]["draw"] == "imbalance_cifar"


def test_splits_made_before_longtail_draw_existed_still_match_their_settings():
    from pipeline.config import LongTailConfig, to_dict
    from pipeline.longtail.splits import selection, split_params

    before = {k: v for k, v in to_dict(LongTailConfig()).items() if k not in ("draw", "labeled_ids")}
    assert selection(before) == selection(split_params(LongTailConfig()))
    assert selection(before) != selection(split_params(LongTailConfig(draw="imbalance_cifar")))


def test_a_split_list_edited_in_place_changes_the_settings_a_sweep_compares(tmp_path):
    from pipeline.config import LongTailConfig
    from pipeline.longtail.splits import selection, split_params

    (tmp_path / "list.txt").write_text("a\nb\n")
    cfg = LongTailConfig(labeled_ids=str(tmp_path / "list.txt"))
    was = selection(split_params(cfg))
    (tmp_path / "list.txt").write_text("a\nc\n")
    assert selection(split_params(cfg)) != was
