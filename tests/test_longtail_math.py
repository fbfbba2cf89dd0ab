"""The pure long-tail math: class-count profiles, seeded subsampling, hold-outs."""
import numpy as np
import pytest

from pipeline.longtail.profiles import PROFILES, LongTailError, class_counts, ids_sha256, stratified_holdout, subsample


def test_exp_profile_matches_the_reference_cifar10_lt_counts():
    assert class_counts("exp", 5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(class_counts("exp", 5000, 10, 100)) == 12406


def test_exp_profile_cifar100_ends_at_n_max_over_rho():
    counts = class_counts("exp", 500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5 and counts == sorted(counts, reverse=True)


def test_step_profile_halves_the_classes():
    assert class_counts("step", 5000, 10, 100) == [5000] * 5 + [50] * 5
    assert class_counts("step", 100, 5, 10) == [100, 100, 10, 10, 10]  # odd C: the tail half is larger


def test_none_profile_is_balanced():
    assert class_counts("none", 300, 4, 100) == [300] * 4


def test_negative_ratio_reverses_the_class_order():
    assert class_counts("exp", 3000, 10, -100) == class_counts("exp", 3000, 10, 100)[::-1]


def test_unknown_profile_is_named_in_the_error():
    with pytest.raises(LongTailError, match=r"'zipf'.*registered: exp, none, step"):
        class_counts("zipf", 10, 3, 2)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_starts_at_n_max_never_grows_and_reverses_with_a_negative_ratio(profile):
    for n_max, classes, ratio in ((5000, 10, 100), (500, 100, 10), (7, 3, 2), (40, 1, 5)):
        counts = class_counts(profile, n_max, classes, ratio)
        assert len(counts) == classes and counts[0] == n_max and counts == sorted(counts, reverse=True)
        assert min(counts) >= int(n_max / ratio)  # no class below the tail the ratio names
        assert class_counts(profile, n_max, classes, -ratio) == counts[::-1]


def _pool(per_class=50, classes=4):
    return [[f"c{c}-{i:03d}" for i in range(per_class)] for c in range(classes)]


def test_subsample_same_seed_same_ids_whatever_the_input_order():
    ids = _pool()
    shuffled = [list(reversed(x)) for x in ids]
    a = subsample(ids, [20, 10, 5, 2], rng=np.random.default_rng(7))
    b = subsample(shuffled, [20, 10, 5, 2], rng=np.random.default_rng(7))
    assert a == b
    c = subsample(ids, [20, 10, 5, 2], rng=np.random.default_rng(8))
    assert a["labeled"] != c["labeled"]


def test_subsample_splits_are_disjoint_and_sized():
    out = subsample(_pool(), [20, 10, 5, 2], val_per_class=3, unlabeled=[4, 8, 12, 16], rng=np.random.default_rng(0))
    assert [len(x) for x in out["labeled"]] == [20, 10, 5, 2]
    assert [len(x) for x in out["val"]] == [3] * 4
    assert [len(x) for x in out["unlabeled"]] == [4, 8, 12, 16]
    flat = {s: {i for ids in out[s] for i in ids} for s in out}
    assert not flat["labeled"] & flat["unlabeled"] and not flat["labeled"] & flat["val"]
    assert not flat["val"] & flat["unlabeled"]
    # every id stays in its own class
    assert all(i.startswith(f"c{c}-") for s in out for c, ids in enumerate(out[s]) for i in ids)


def test_subsample_default_pool_is_everything_left_over():
    out = subsample(_pool(), [20, 10, 5, 2], val_per_class=3, rng=np.random.default_rng(0))
    assert [len(x) for x in out["unlabeled"]] == [27, 37, 42, 45]


def test_labeled_set_does_not_depend_on_val_or_pool_settings():
    a = subsample(_pool(), [20, 10, 5, 2], rng=np.random.default_rng(3))
    b = subsample(_pool(), [20, 10, 5, 2], val_per_class=5, unlabeled=[1, 1, 1, 1], rng=np.random.default_rng(3))
    assert a["labeled"] == b["labeled"]


def test_asking_for_more_than_exists_names_the_class():
    with pytest.raises(LongTailError, match=r"class 2 \(bird\) has 50 images, asked for labeled 40 \+ val 0 \+ unlabeled 20"):
        subsample(_pool(), [10, 10, 40, 1], unlabeled=[5, 5, 20, 5], rng=np.random.default_rng(0),
                  class_names=["plane", "car", "bird", "cat"])


def test_stratified_holdout_takes_the_fraction_of_every_class_deterministically():
    labels = np.repeat(np.arange(3), [40, 20, 8])
    mask = stratified_holdout(labels, 0.25, np.random.default_rng(0))
    assert [int(mask[labels == c].sum()) for c in range(3)] == [10, 5, 2]
    assert (mask == stratified_holdout(labels, 0.25, np.random.default_rng(0))).all()


def test_ids_sha256_ignores_order():
    assert ids_sha256(["b", "a", "c"]) == ids_sha256(["c", "b", "a"]) != ids_sha256(["a", "b"])


def test_fixed_labeled_ids_are_kept_and_only_the_rest_is_shuffled():
    ids = [[f"{c}-{i:02d}" for i in range(20)] for c in range(3)]
    fixed = [["0-19", "0-03"], ["1-00"], []]
    a = subsample(ids, [99, 99, 99], val_per_class=2, rng=np.random.default_rng(1), fixed=fixed)
    b = subsample([list(reversed(c)) for c in ids], [1, 1, 1], val_per_class=2, rng=np.random.default_rng(1),
                  fixed=[list(reversed(f)) for f in fixed])
    assert a == b  # the counts argument does not apply; the input order never matters
    assert [sorted(c) for c in a["labeled"]] == [sorted(f) for f in fixed]
    for c in range(3):  # the rest: val + pool, every other image exactly once
        rest = a["val"][c] + a["unlabeled"][c]
        assert len(a["val"][c]) == 2 and sorted(rest) == sorted(set(ids[c]) - set(fixed[c]))
    other = subsample(ids, [0, 0, 0], val_per_class=2, rng=np.random.default_rng(2), fixed=fixed)
    assert other["labeled"] == a["labeled"] and other["val"] != a["val"]


@pytest.mark.parametrize("fixed", [[["a", "a"]], [["z"]]])
def test_fixed_labeled_ids_must_be_distinct_images_of_the_class(fixed):
    with pytest.raises(LongTailError, match="class 0 \\(0\\): the fixed labeled ids repeat, or are not all"):
        subsample([["a", "b", "c"]], [1], rng=np.random.default_rng(0), fixed=fixed)


def test_a_random_state_draws_the_images_imbalance_cifar_keeps():
    # The reference's rule, written out: np.random.seed(seed) once, then for each class in order the
    # positions of its images (in data order) are shuffled in place and the first n_c kept.
    labels = np.random.default_rng(7).integers(0, 4, 300)
    counts, seed = [40, 20, 9, 3], 5
    np.random.seed(seed)
    expected = []
    for c, n in enumerate(counts):
        positions = np.where(labels == c)[0]
        np.random.shuffle(positions)
        expected.append([f"batch/{i:05d}" for i in positions[:n]])
    ids_by_class = [[f"batch/{i:05d}" for i in np.flatnonzero(labels == c)] for c in range(4)]
    got = subsample(ids_by_class, counts, rng=np.random.RandomState(seed))
    assert got["labeled"] == expected
    assert subsample(ids_by_class, counts, rng=np.random.default_rng(seed))["labeled"] != expected
