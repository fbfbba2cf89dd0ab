"""jobs/ingest.py on local Spark, on tiny inputs in every supported format, broken records included.
Outputs are read back with plain pyarrow, as readers outside Spark would."""
import json
import pickle
import tarfile
from collections import Counter

import numpy as np
import pytest

from jobs import ingest as ingest_job
from pipeline.images import decode
from tests.helpers import Evil, image_bytes, ingest_report, read_table, write_cifar10, write_tree


def run(out, *args):
    return ingest_job.main(["--out", str(out), *map(str, args)])


def assert_accounted(out):
    """Every input record is in exactly one of images/ and _rejected/, and ingest.json says so."""
    report = ingest_report(out)
    images, rejected = read_table(out / "images"), read_table(out / "_rejected")
    n_rejected = 0 if rejected is None else rejected.num_rows
    assert report["input_records"] == images.num_rows + n_rejected
    assert report["written"] == images.num_rows and report["rejected"]["total"] == n_rejected
    assert len(set(images.column("id").to_pylist())) == images.num_rows
    return report, images, rejected


def test_digits_is_the_embedded_default_with_a_recorded_seeded_split(spark, tmp_path):
    report, images, _ = assert_accounted((run(tmp_path / "d", "--dataset", "digits"), tmp_path / "d")[1])
    assert report["input_records"] == 1797 and report["rejected"]["total"] == 0
    assert report["splits"]["test"]["total"] == 450 and report["splits"]["train"]["total"] == 1347
    assert report["image_shapes"] == [{"height": 8, "width": 8, "channels": 1, "image_format": "raw", "count": 1797}]
    assert len(report["plan"]["split"]["test_ids_sha256"]) == 64
    again = run(tmp_path / "d2", "--dataset", "digits")
    assert again["plan"]["split"] == report["plan"]["split"]  # same seed, same split
    row = images.slice(0, 1).to_pylist()[0]
    pixels = decode(row["image"], row["image_format"], row["height"], row["width"], row["channels"])
    assert pixels.shape == (8, 8, 1) and pixels.dtype == np.uint8 and pixels.max() <= 255


def test_existing_output_is_refused_then_replaced_atomically_with_overwrite(spark, tmp_path, capsys):
    out = tmp_path / "d"
    run(out, "--dataset", "digits")
    with pytest.raises(SystemExit):
        run(out, "--dataset", "digits")
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    run(out, "--dataset", "digits", "--set", "ingest.test_fraction=0.5", "--overwrite")
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target)
    expected = sum(int(round(0.5 * n)) for n in per_class)
    assert ingest_report(out)["splits"]["test"]["total"] == expected  # the new ingest only, not a mix
    assert read_table(out / "images").num_rows == 1797
    assert not list(tmp_path.glob("d.__*")), "temporary directories are cleaned up"


def test_overwrite_refuses_a_folder_that_is_not_an_output_of_ours(spark, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit):
        run(out, "--dataset", "digits", "--overwrite")
    assert "is not an output of this project" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work" and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert not list(tmp_path.glob("precious.__*"))


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_an_output_overlapping_its_input_is_refused(spark, tmp_path, capsys, where):
    tree = write_tree(tmp_path / "tree", {"train/a/0.png": image_bytes(), "train/b/0.png": image_bytes()})
    out = {"same": tree, "inside": tree / "out", "around": tmp_path}[where]
    with pytest.raises(SystemExit):
        run(out, "--dataset", "imagefolder", "--source", tree, "--overwrite")
    assert "overlaps the input" in capsys.readouterr().err
    assert (tree / "train/a/0.png").exists()


def test_an_output_created_by_another_job_meanwhile_is_not_replaced(spark, tmp_path, monkeypatch):
    """Two jobs without --overwrite: the one that commits second fails and keeps its result beside."""
    import pipeline.output as output

    out = tmp_path / "d"
    real_commit = output._commit

    def other_job_first(tmp, target, overwrite):
        monkeypatch.setattr(output, "_commit", real_commit)  # the other job commits normally...
        run(target, "--dataset", "digits", "--set", "ingest.test_fraction=0.5")  # ...while we run
        real_commit(tmp, target, overwrite)

    monkeypatch.setattr(output, "_commit", other_job_first)
    with pytest.raises(SystemExit):
        run(out, "--dataset", "digits")
    monkeypatch.undo()
    assert ingest_report(out)["config"]["test_fraction"] == 0.5  # the other job's output, intact
    kept = list(tmp_path.glob("d.__tmp-*"))
    assert len(kept) == 1 and (kept[0] / "ingest.json").exists()  # ours, kept where the error said


def test_cifar10_archive_with_a_malicious_batch_and_a_bad_label(spark, tmp_path):
    from tests.helpers import cifar_batch

    evil = pickle.dumps({b"data": Evil()}, protocol=2)
    bad_label = cifar_batch(6, labels=[0, 1, 2, 3, 4, 12], seed=9)
    archive = write_cifar10(tmp_path / "cifar-10-python.tar.gz", bad={"data_batch_3": evil, "data_batch_4": bad_label})
    report, images, rejected = assert_accounted((run(tmp_path / "c", "--dataset", "cifar10", "--source", archive),
                                                 tmp_path / "c")[1])
    assert report["class_names"] == [f"c{i}" for i in range(10)]
    assert report["splits"]["train"]["total"] == 4 * 6 - 1 and report["splits"]["test"]["total"] == 6
    assert report["rejected"]["by_reason"] == {"bad_label": 1, "unreadable_source": 1}
    reasons = {r["reason"]: r for r in rejected.to_pylist()}
    assert "refused global" in reasons["unreadable_source"]["detail"]
    assert reasons["unreadable_source"]["source"].endswith("data_batch_3")
    assert reasons["bad_label"]["label_raw"] == "12" and len(reasons["bad_label"]["payload"]) == 32 * 32 * 3
    # the reference code's normalisation (conf/datasets/cifar10.yaml, the data set's own config, which
    # --dataset cifar10 brings in) travels with the data to every training on it
    assert report["normalization"] == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010],
                                       "from": "config"}


def test_cifar10_pixels_are_hwc_from_the_planar_batch(spark, tmp_path):
    archive = write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=2)
    with tarfile.open(archive) as tar:
        extracted = tmp_path / "x"
        tar.extractall(extracted)
    run(tmp_path / "c", "--dataset", "cifar10", "--source", extracted)  # the extracted folder works too
    images = read_table(tmp_path / "c" / "images").to_pylist()
    row = next(r for r in images if r["id"] == "test_batch/00001")
    batch = pickle.loads((extracted / "cifar-10-batches-py/test_batch").read_bytes(), encoding="bytes")
    expected = batch[b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert (decode(row["image"], "raw", 32, 32, 3) == expected).all()
    assert row["label"] == batch[b"labels"][1]


def test_cifar10_without_source_or_network_says_where_to_put_the_archive(spark, tmp_path, capsys, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)  # no network here either way
    with pytest.raises(SystemExit):
        run(tmp_path / "c", "--dataset", "cifar10", "--set", f"ingest.download_dir={tmp_path}/dl")
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and "--source" in err


def test_svhn_mat_files_map_label_10_to_digit_0_and_reject_bad_labels(spark, tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    src = tmp_path / "svhn"
    src.mkdir()
    savemat(src / "train_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8),
                                            "y": np.array([[10], [1], [9], [0]], dtype=np.uint8)})
    savemat(src / "test_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 2), dtype=np.uint8),
                                           "y": np.array([[3], [10]], dtype=np.uint8)})
    report, images, rejected = assert_accounted((run(tmp_path / "s", "--dataset", "svhn", "--source", src),
                                                 tmp_path / "s")[1])
    labels = dict(zip(images.column("id").to_pylist(), images.column("label").to_pylist()))
    assert labels["train_32x32/000000"] == 0 and labels["train_32x32/000001"] == 1
    assert report["splits"]["test"]["class_counts"][0] == 1
    assert rejected.to_pylist()[0]["reason"] == "bad_label" and "1..10" in rejected.to_pylist()[0]["detail"]


def _broken_tree():
    jpeg = image_bytes("JPEG", (8, 8), seed=3)
    return {
        "train/cat/a.png": image_bytes("PNG", (8, 8), seed=1),
        "train/cat/b.jpg": jpeg,
        "train/dog/c.png": image_bytes("PNG", (8, 8), seed=2),
        "train/dog/empty.png": b"",
        "train/dog/truncated.jpg": jpeg[: len(jpeg) // 2],
        "train/dog/notes.txt": b"not an image",
        "train/dog/big.png": image_bytes("PNG", (16, 8), seed=4),
        "train/bird/grey.png": image_bytes("PNG", (8, 8), mode="L", seed=5),
        "train/bird/palette.gif": image_bytes("GIF", (8, 8), mode="P", seed=6),
        "train/stray.png": image_bytes("PNG", (8, 8), seed=7),
        "test/cat/d.png": image_bytes("PNG", (8, 8), seed=8),
        "unlabeled/u1.png": image_bytes("PNG", (8, 8), seed=9),
        "README.txt": b"top-level file",
    }


EXPECTED_REASONS = {"empty_file": 1, "truncated": 1, "not_an_image": 1, "size_mismatch": 1, "mode_mismatch": 1,
                    "unsupported_mode": 1, "no_class_folder": 2}


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_imagefolder_rejects_every_kind_of_bad_file_with_its_reason(spark, tmp_path, packed):
    tree = write_tree(tmp_path / "tree", _broken_tree())
    source = tree
    if packed:
        source = tmp_path / "tree.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tree, arcname="mydata")  # a wrapper folder around split/class/image
    run(tmp_path / "o", "--dataset", "imagefolder", "--source", source, "--image-size", 8, "--channels", 3)
    report, images, rejected = assert_accounted(tmp_path / "o")
    assert report["class_names"] == ["bird", "cat", "dog"]
    assert report["rejected"]["by_reason"] == EXPECTED_REASONS
    assert report["splits"]["train"]["class_counts"] == [0, 2, 1]
    assert report["splits"]["unlabeled"] == {"total": 1, "unlabeled": 1, "class_counts": [0, 0, 0]}
    assert set(images.column("id").to_pylist()) == {"train/cat/a.png", "train/cat/b.jpg", "train/dog/c.png",
                                                    "test/cat/d.png", "unlabeled/u1.png"}
    by_source = {r["source"].rsplit("/", 1)[-1]: r for r in rejected.to_pylist()}
    assert by_source["big.png"]["detail"] == "8x16 pixels, expected 8x8"  # height x width
    assert by_source["notes.txt"]["payload"] == b"not an image"  # kept, not lost
    assert by_source["stray.png"]["reason"] == "no_class_folder"


def test_imagefolder_without_declared_size_keeps_every_shape_and_reports_them(spark, tmp_path):
    tree = write_tree(tmp_path / "t", {"train/a/x.png": image_bytes("PNG", (8, 8)),
                                       "train/b/y.png": image_bytes("PNG", (12, 10), mode="L")})
    report, _, _ = assert_accounted((run(tmp_path / "o", "--dataset", "imagefolder", "--source", tree),
                                     tmp_path / "o")[1])
    shapes = {(s["height"], s["width"], s["channels"]) for s in report["image_shapes"]}
    assert shapes == {(8, 8, 3), (10, 12, 1)}


def test_whitespace_manifest_like_imagenet_lt(spark, tmp_path):
    files = write_tree(tmp_path / "root", {f"train/n0{i % 3}/{name}.jpg": image_bytes("JPEG", seed=i)
                                           for i, name in enumerate(["a", "b c", "d", "e", "f", "g"])})
    manifest = tmp_path / "ImageNet_LT_train.txt"
    manifest.write_text("# comment\ntrain/n00/a.jpg 0\ntrain/n01/b c.jpg 0\n\ntrain/n02/d.jpg 2\n"
                        "train/n02/missing.jpg 1\ntrain/n02/d.jpg 2\ntrain/n00/e.jpg x\ntrain/n01/f.jpg -1\n"
                        "train/n02/g.jpg\n")
    run(tmp_path / "o", "--dataset", "manifest", "--source", manifest, "--root", files)
    report, images, rejected = assert_accounted(tmp_path / "o")
    assert list(report["splits"]) == ["train"]  # from the file name
    assert report["class_names"] == ["0", "1", "2"]
    assert report["splits"]["train"]["class_counts"] == [2, 0, 1]
    assert Counter(r["reason"] for r in rejected.to_pylist()) == {"missing_file": 1, "duplicate": 1, "bad_label": 3}
    assert any(":6:" in r["detail"] or r["detail"].startswith(str(manifest) + ":6") for r in rejected.to_pylist())


def test_manifest_paths_that_leave_the_root_are_rejected_without_reading_them(spark, tmp_path):
    root = write_tree(tmp_path / "root", {"train/a.png": image_bytes(seed=1), "train/b.png": image_bytes(seed=2)})
    secret = write_tree(tmp_path / "secret", {"key.png": image_bytes(seed=3)})
    (root / "train" / "link.png").symlink_to(secret / "key.png")
    (root / "escape").symlink_to(secret, target_is_directory=True)
    manifest = tmp_path / "m_train.txt"
    manifest.write_text(f"train/a.png 0\n{secret / 'key.png'} 0\n../secret/key.png 1\ntrain/../../secret/key.png 1\n"
                        f"file://{secret / 'key.png'} 0\ntrain/link.png 1\nescape/key.png 0\ntrain/b.png 1\n")
    run(tmp_path / "o", "--dataset", "manifest", "--source", manifest, "--root", root)
    report, images, rejected = assert_accounted(tmp_path / "o")
    assert sorted(images.column("id").to_pylist()) == ["train/train/a.png", "train/train/b.png"]
    assert report["rejected"]["by_reason"] == {"outside_root": 6}
    assert all(r["payload"] is None for r in rejected.to_pylist())  # no byte of the outside file is stored
    assert all("m_train.txt:" in r["detail"] for r in rejected.to_pylist())  # each names its manifest line


def test_imagefolder_symlinks_out_of_the_tree_are_counted_not_followed(spark, tmp_path):
    tree = write_tree(tmp_path / "tree", {"train/a/0.png": image_bytes(seed=0), "train/b/1.png": image_bytes(seed=1)})
    outside = write_tree(tmp_path / "etc", {f"f{i}.png": image_bytes(seed=i) for i in range(3)})
    (tree / "train" / "b" / "stolen").symlink_to(outside, target_is_directory=True)
    report, images, rejected = assert_accounted((run(tmp_path / "o", "--dataset", "imagefolder", "--source", tree),
                                                 tmp_path / "o")[1])
    assert images.num_rows == 2 and report["rejected"]["by_reason"] == {"outside_root": 3}
    assert all(r["payload"] is None for r in rejected.to_pylist())


def test_tar_link_members_are_rejected_and_counted(spark, tmp_path):
    import io

    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in {"train/a/0.png": image_bytes(seed=0), "train/b/1.png": image_bytes(seed=1)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind in (("train/a/sym.png", tarfile.SYMTYPE), ("train/b/hard.png", tarfile.LNKTYPE)):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else "train/a/0.png"
            tar.addfile(link)
    report, images, rejected = assert_accounted((run(tmp_path / "o", "--dataset", "imagefolder", "--source", archive),
                                                 tmp_path / "o")[1])
    assert images.num_rows == 2 and report["rejected"]["by_reason"] == {"link_member": 2}
    assert report["input_records"] == 4


def test_each_unit_of_a_plan_is_read_by_its_own_task(spark, tmp_path):
    import pyarrow.parquet as pq

    run(tmp_path / "d", "--dataset", "digits")  # two units (train, test) on 2 cores: one task each
    files = sorted((tmp_path / "d" / "images").glob("*.parquet"))
    splits = [set(pq.read_table(f, columns=["split"]).column("split").to_pylist()) for f in files]
    assert sorted(map(sorted, splits)) == [["test"], ["train"]]


def _archive(path, files: dict):
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_members_are_read_at_the_listed_offsets_and_a_changed_archive_is_rejected(tmp_path):
    import io
    import os

    from pipeline.config import resolve
    from pipeline.sources import TaskContext, get_source

    deep = "train/a/" + "x" * 150 + ".png"  # a long name: a pax header before the member's own
    files = {f"train/{c}/{i}.png": image_bytes(seed=10 * k + i) for k, c in enumerate("ab") for i in range(3)}
    files[deep] = image_bytes(seed=99)
    archive = _archive(tmp_path / "t.tar.gz", files)
    source = get_source("imagefolder")
    plan = source.plan(resolve([], [("ingest.source", json.dumps([str(archive)]))]).ingest, 2)
    ctx = TaskContext(tuple(plan.class_names), None, None, plan.label_type)
    rows = [r for unit in plan.units for r in source.read(unit, ctx)]
    assert len(plan.units) == 2 and all(r.get("reason") is None for r in rows)
    assert {r["id"]: r["image"] for r in rows} == files  # every member's own bytes, the long name's too

    _archive(archive, {name: image_bytes(seed=7) for name in files})  # replaced after the listing
    os.utime(archive, ns=(0, 10**9))
    rows = [r for unit in plan.units for r in source.read(unit, ctx)]
    assert len(rows) == len(files) and {r["reason"] for r in rows} == {"unreadable_source"}
    assert "changed since it was listed" in rows[0]["detail"]
    assert sorted(r["source"] for r in rows) == sorted(f"{archive}!{name}" for name in files)  # each one named

    # same size and mtime, members swapped: the header checksums tell
    plain, image = tmp_path / "t.tar", image_bytes(seed=1)
    swapped = {"train/a/0.png": image, "train/b/0.png": image}
    with tarfile.open(plain, "w") as tar:
        for name, data in swapped.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    listed = os.stat(plain)
    plan = source.plan(resolve([], [("ingest.source", json.dumps([str(plain)]))]).ingest, 1)
    with tarfile.open(plain, "w") as tar:
        for name, data in reversed(swapped.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.utime(plain, ns=(listed.st_atime_ns, listed.st_mtime_ns))
    assert os.stat(plain).st_size == listed.st_size
    rows = list(source.read(plan.units[0], TaskContext(tuple(plan.class_names), None, None, plan.label_type)))
    assert [r["reason"] for r in rows] == ["unreadable_source"] * 2 and "checksum" in rows[0]["detail"]


def test_written_ids_counts_the_rows_and_names_the_repeated_ids(spark, tmp_path):
    from pipeline.ingest import written_ids

    spark.createDataFrame([("a",), ("b",), ("a",), ("c",)], "id string").write.parquet(str(tmp_path / "x"))
    assert written_ids(spark, str(tmp_path / "x")) == (4, ["a"])
    spark.createDataFrame([("a",), ("b",)], "id string").write.parquet(str(tmp_path / "y"))
    assert written_ids(spark, str(tmp_path / "y")) == (2, [])
    spark.createDataFrame([], "id string").write.parquet(str(tmp_path / "z"))
    assert written_ids(spark, str(tmp_path / "z")) == (0, [])


def test_csv_manifest_with_class_names(spark, tmp_path):
    write_tree(tmp_path, {"img/1.png": image_bytes(seed=1), "img/2.png": image_bytes(seed=2),
                          "img/3.png": image_bytes(seed=3)})
    (tmp_path / "catalogue.csv").write_text("sku,path,label\n1,img/1.png,shoes\n2,img/2.png,bags\n3,img/3.png,\n")
    run(tmp_path / "o", "--dataset", "manifest", "--source", tmp_path / "catalogue.csv", "--split", "train",
        "--set", "ingest.label_type=name")
    report, images, rejected = assert_accounted(tmp_path / "o")
    assert report["class_names"] == ["bags", "shoes"]
    assert report["splits"]["train"]["class_counts"] == [1, 1]
    assert rejected.to_pylist()[0]["reason"] == "bad_label"


def test_csv_manifest_without_the_header_names_the_file(spark, tmp_path, capsys):
    (tmp_path / "m.csv").write_text("a.png,1\n")
    with pytest.raises(SystemExit):
        run(tmp_path / "o", "--dataset", "manifest", "--source", tmp_path / "m.csv")
    err = capsys.readouterr().err
    assert "m.csv" in err and "'path' and 'label'" in err
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_lists_the_registered_ones(spark, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path / "o", "--dataset", "imagenet21k")
    assert "cifar10, cifar100, digits, imagefolder, manifest, svhn" in capsys.readouterr().err


def test_a_corrupt_archive_is_named_in_the_error(spark, tmp_path, capsys):
    archive = write_cifar10(tmp_path / "cifar-10-python.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit):
        run(tmp_path / "c", "--dataset", "cifar10", "--source", archive)
    assert "cannot read archive" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_cifar100_archive_uses_the_fine_labels_and_names(spark, tmp_path):
    import io

    rng = np.random.default_rng(0)
    names = [f"fine{i:02d}".encode() for i in range(100)]

    def batch(n, seed):
        r = np.random.default_rng(seed)
        return pickle.dumps({b"data": r.integers(0, 256, (n, 3072), dtype=np.uint8),
                             b"fine_labels": [int(x) for x in r.integers(0, 100, n)],
                             b"coarse_labels": [int(x) for x in r.integers(0, 20, n)]}, protocol=2)

    members = {"meta": pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}, protocol=2),
               "train": batch(7, 1), "test": batch(3, 2)}
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report, images, _ = assert_accounted((run(tmp_path / "c", "--dataset", "cifar100", "--source", archive),
                                          tmp_path / "c")[1])
    assert report["num_classes"] == 100 and report["class_names"][7] == "fine07"
    assert report["splits"]["train"]["total"] == 7 and report["splits"]["test"]["total"] == 3
    expected = pickle.loads(members["train"], encoding="bytes")[b"fine_labels"]
    got = {r["id"]: r["label"] for r in images.to_pylist()}
    assert [got[f"train/{i:05d}"] for i in range(7)] == expected


def test_one_stray_nested_file_does_not_turn_the_tree_into_a_wrapper():
    from pipeline.sources.imagefolder import wrapper_prefix

    tree = [f"train/{c}/{i}.png" for c in ("cat", "dog") for i in range(5)]
    assert wrapper_prefix(tree) == ""
    assert wrapper_prefix(tree + ["train/cat/extra/0.png"]) == ""  # was "train/": classes became ['extra']
    assert wrapper_prefix([f"cifar/{p}" for p in tree]) == "cifar/"


def test_a_typo_label_does_not_create_a_hundred_thousand_classes(spark, tmp_path, capsys):
    write_tree(tmp_path / "r", {f"{i}.png": image_bytes(seed=i) for i in range(4)})
    manifest = tmp_path / "m_train.txt"
    manifest.write_text("0.png 0\n1.png 1\n2.png 100000\n3.png 2\n")
    with pytest.raises(SystemExit):
        run(tmp_path / "o", "--dataset", "manifest", "--source", manifest, "--root", tmp_path / "r")
    err = capsys.readouterr().err
    assert "largest label 100000 (" in err and "m_train.txt:3)" in err  # the line at fault
    report, _, rejected = assert_accounted((run(tmp_path / "o", "--dataset", "manifest", "--source", manifest, "--root",
                                                tmp_path / "r", "--set", "ingest.num_classes=3"), tmp_path / "o")[1])
    assert report["num_classes"] == 3 and report["rejected"]["by_reason"] == {"bad_label": 1}


def test_outside_root_refuses_queries_fragments_and_nul_bytes():
    from pipeline.sources import outside_root

    assert outside_root("s3://bucket/root", "x.jpg") is None
    for path in ("x.jpg?endpoint_override=evil:9000&scheme=http", "x.jpg#frag", "x\x00.jpg"):
        assert "holds '?', '#' or a NUL byte" in outside_root("s3://bucket/root", path)


def test_overlap_check_sees_through_file_uris_dots_and_symlinks(tmp_path):
    from pipeline.output import OutputOverlap, check_target

    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    for out, given in ((str(data / "sub"), f"file:{data}"), (str(tmp_path / "b" / "sub"), f"file://{tmp_path}/a/../b"),
                       (str(tmp_path / "link" / "sub"), str(data))):
        (tmp_path / "b").mkdir(exist_ok=True)
        with pytest.raises(OutputOverlap):
            check_target(out, True, [given])


@pytest.mark.parametrize("name", sorted(__import__("pipeline.sources", fromlist=["load_sources"]).load_sources()))
def test_every_registered_source_plans_and_reads_under_its_own_name(name):
    from pipeline.sources import Source, get_source

    source = get_source(name)
    assert isinstance(source, Source) and source.name == name
    assert type(source).plan is not Source.plan and type(source).read is not Source.read  # both implemented


def _plan(archive, **settings):
    from pipeline.config import resolve
    from pipeline.sources import get_source

    sets = [("ingest.source", json.dumps([str(archive)]))] + [(f"ingest.{k}", str(v)) for k, v in settings.items()]
    return get_source("imagefolder").plan(resolve([], sets).ingest, 2)


def _tar_bytes(files: dict) -> bytes:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SIXTY = {f"train/{'ab'[i % 2]}/{i:02d}.png": image_bytes(seed=i) for i in range(60)}


def test_an_archive_whose_listing_stops_before_its_end_is_an_error_naming_where(tmp_path):
    from pipeline.sources import SourceError

    data = bytearray(_tar_bytes(SIXTY))
    offsets = [m.offset for m in tarfile.open(fileobj=__import__("io").BytesIO(bytes(data))).getmembers()]
    flipped = bytearray(data)
    flipped[offsets[30] + 100] ^= 0xFF  # one byte of member #30's header: its checksum no longer matches
    cut = data[:offsets[30]]  # cut at a header boundary, no end-of-archive blocks
    for name, blob in (("flipped.tar", flipped), ("cut.tar", cut)):
        (tmp_path / name).write_bytes(bytes(blob))
        with pytest.raises(SourceError, match=rf"{name}: the listing stopped after 30 members at offset {offsets[30]}"):
            _plan(tmp_path / name)
    assert len(_plan(_archive(tmp_path / "whole.tar.gz", SIXTY)).units[0]["members"]) == 30  # 60 on 2 tasks


def test_a_member_with_a_negative_size_is_refused_naming_it(tmp_path):
    from pipeline.sources import SourceError

    data = bytearray(_tar_bytes(SIXTY))
    second = tarfile.open(fileobj=__import__("io").BytesIO(bytes(data))).getmembers()[1].offset
    header = bytearray(data[second:second + 512])
    header[124:136] = b"\xff" * 12  # base-256 size field: -1
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    data[second:second + 512] = header
    (tmp_path / "neg.tar").write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"member #1 'train/b/01.png' at offset 1024: declared size -1"):
        _plan(tmp_path / "neg.tar")


def test_members_that_leave_the_tree_or_are_not_files_or_too_large_are_rejected_one_by_one(tmp_path):
    import io

    from pipeline.sources import TaskContext, get_source

    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in {"train/a/ok.png": image_bytes(seed=1), "../cat/x.png": image_bytes(seed=2),
                           "train/a/big.png": b"\0" * 3_000_000}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        fifo = tarfile.TarInfo("train/a/pipe.png")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
        bad = tarfile.TarInfo("train/a/caf\udce9.png")  # a Latin-1 byte: not UTF-8
        data = image_bytes(seed=3)
        bad.size = len(data)
        tar.addfile(bad, io.BytesIO(data))
    plan = _plan(archive, max_record_mb=2)
    assert plan.class_names == ["a"] and "labeled_splits" in plan.units[0]
    assert all(u["labeled_splits"] == ["train"] for u in plan.units)  # no split named ".."
    ctx = TaskContext(tuple(plan.class_names), None, None, plan.label_type)
    rows = [r for unit in plan.units for r in get_source("imagefolder").read(unit, ctx)]
    reasons = {r.get("source", r.get("id")).split("!")[-1]: r.get("reason") for r in rows}
    assert reasons == {"train/a/ok.png": None, "../cat/x.png": "outside_root", "train/a/big.png": "too_large",
                       "train/a/pipe.png": "unsupported_member", "train/a/caf\ufffd.png": "bad_name"}
    big = next(r for r in rows if r.get("reason") == "too_large")
    assert "3,000,000 bytes, over ingest.max_record_mb (2 MB)" in big["detail"] and big["image"] is None


def test_a_file_over_the_record_cap_is_rejected_unread(tmp_path):
    from pipeline.sources import TaskContext, get_source

    write_tree(tmp_path / "tree", {"train/a/0.png": image_bytes(seed=0), "train/b/big.png": b"\0" * 1_200_000})
    plan = get_source("imagefolder").plan(__import__("pipeline.config", fromlist=["resolve"]).resolve(
        [], [("ingest.source", json.dumps([str(tmp_path / "tree")])), ("ingest.max_record_mb", "1")]).ingest, 2)
    ctx = TaskContext(tuple(plan.class_names), None, None, plan.label_type)
    rows = [r for unit in plan.units for r in get_source("imagefolder").read(unit, ctx)]
    assert sorted(r.get("reason") or "ok" for r in rows) == ["ok", "too_large"]


def test_a_cifar_batch_of_self_nesting_lists_is_refused_at_once(tmp_path):
    import signal

    from pipeline.config import resolve
    from pipeline.sources import SourceError, TaskContext, get_source

    nest = [0]
    for _ in range(64):  # 2^64 leaves, a few hundred bytes pickled: the lists are shared
        nest = [nest, nest]
    bad = pickle.dumps({b"data": nest, b"labels": [0]}, protocol=2)
    assert len(bad) < 1000
    archive = write_cifar10(tmp_path / "cifar-10-python.tar.gz", bad={"data_batch_1": bad})
    source = get_source("cifar10")
    plan = source.plan(resolve([], [("ingest.dataset", "cifar10"), ("ingest.source", json.dumps([str(archive)]))]).ingest, 2)
    unit = next(u for u in plan.units if u["member"].endswith("data_batch_1"))
    signal.alarm(20)  # before the check, numpy never came back
    try:
        with pytest.raises(SourceError, match=r"data_batch_1: ValueError: data row 0 is a list of 2 items, not 3072"):
            list(source.read(unit, TaskContext(tuple(plan.class_names), None, None, plan.label_type)))
    finally:
        signal.alarm(0)
    good = next(u for u in plan.units if u["member"].endswith("data_batch_2"))
    assert len(list(source.read(good, TaskContext(tuple(plan.class_names), None, None, plan.label_type)))) == 6


def _manifest_rows(manifest, **settings):
    from pipeline.config import resolve
    from pipeline.sources import TaskContext, get_source

    sets = [("ingest.dataset", "manifest"), ("ingest.source", json.dumps([str(manifest)])),
            ("ingest.label_type", "name")] + [(f"ingest.{k}", str(v)) for k, v in settings.items()]
    cfg = resolve([], sets).ingest
    source = get_source("manifest")
    plan = source.plan(cfg, 2)
    ctx = TaskContext(tuple(plan.class_names), None, None, plan.label_type, int(cfg.max_record_mb * 2**20))
    return [r for unit in plan.units for r in source.read(unit, ctx)]


def test_manifests_that_are_binary_or_have_oversized_fields_fail_or_reject_naming_the_line(tmp_path):
    from pipeline.sources import SourceError

    (tmp_path / "bin.csv").write_bytes(b"path,label\n\xff\xfe\x00\x01,a\n")
    with pytest.raises(SourceError, match=r"bin.csv: not UTF-8 text \(byte 11"):
        _manifest_rows(tmp_path / "bin.csv")
    (tmp_path / "huge.csv").write_text("path,label\n\"" + "x" * 200_000 + "\",a\n")
    with pytest.raises(SourceError, match=r"huge.csv: line 2: field larger than field limit"):
        _manifest_rows(tmp_path / "huge.csv")
    write_tree(tmp_path, {"img/1.png": image_bytes(seed=1), "img/big.png": b"\0" * 1_100_000})
    (tmp_path / "long.txt").write_text(f"img/1.png a\n{'y' * 50_000}.png a\nimg/big.png a\nimg/1.png {'z' * 5000}\n")
    rows = _manifest_rows(tmp_path / "long.txt", max_record_mb=1)
    assert [r.get("reason") for r in rows] == [None, "too_large", "too_large", "too_large"]  # no class "zzz..."
    assert "long.txt:2: a field of 50,004 characters (at most 4096)" in rows[1]["detail"]
    assert len(rows[1]["source"]) == 200 and "1,100,000 bytes, over ingest.max_record_mb (1 MB)" in rows[2]["detail"]
