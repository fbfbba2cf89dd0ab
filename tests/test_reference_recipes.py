"""Every recipe in conf/methods pinned to the code it names (its ``reference:``): loss and gradient of
this project's parts against a plain float64 implementation of that code's formula written here
(from the papers and the public code, not copied), on long-tailed batches, weighted and unweighted,
before and after the DRW switch; then the samplers' probabilities, the SSP and semi-supervised
batches and the augmentation's crop border."""
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import resolve
from pipeline.losses import class_weight_at, create_loss, posthoc_adjust
from pipeline.schedule import drw_epoch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.stem for p in (ROOT / "conf/methods").glob("*.yaml"))
COUNTS = np.array([500, 150, 45, 14, 5])  # a long tail, rho = 100
BETA = 0.9999


# --- the reference formulas, plain numpy -------------------------------------------------------

def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def ce_terms(z, y):
    return -log_softmax(z)[np.arange(len(y)), y]


def torch_ce(z, y, w=None):
    """torch.nn.CrossEntropyLoss(weight=w) as documented: sum_i w_yi ce_i / sum_i w_yi."""
    t = ce_terms(z, y)
    wy = np.ones(len(y)) if w is None else w[y]
    return (wy * t).sum() / wy.sum()


def effective_number(counts, beta=BETA):
    """Cui et al. / LDAM-DRW's per_cls_weights: (1 - beta) / (1 - beta^n), normalised to sum to C."""
    w = (1 - beta) / (1 - np.power(beta, counts.astype(float)))
    return w / w.sum() * len(counts)


def drw_weights(epoch, drw):
    """LDAM-DRW train.py's DRW rule: betas [0, 0.9999] indexed by epoch // drw (beta 0: all ones)."""
    return effective_number(COUNTS, [0.0, BETA][min(1, epoch // drw)])


def ldam(z, y, w=None, s=30.0, max_m=0.5):
    """LDAMLoss: margins m_c = 1 / n_c^(1/4) scaled to max_m, CE(s * (cos - m_y 1[j = y]), weight=w).
    ``z`` is this project's head output s * cos."""
    m = 1.0 / np.sqrt(np.sqrt(COUNTS))
    m = m * (max_m / m.max())
    cos = z / s
    cos = cos - np.eye(z.shape[1])[y] * m[y][:, None]
    return torch_ce(s * cos, y, w)


def focal_ldam_drw(z, y, w=None, gamma=1.0):
    """LDAM-DRW FocalLoss: ce_i = F.cross_entropy(reduction='none', weight=w) = w_yi CE_i,
    p = exp(-ce_i), mean over the batch of (1 - p)^gamma ce_i."""
    t = ce_terms(z, y) * (1.0 if w is None else w[y])
    return ((1 - np.exp(-t)) ** gamma * t).mean()


def cui_softmax(z, y, w):
    """tf.losses.softmax_cross_entropy(weights=w_y), SUM_BY_NONZERO_WEIGHTS: sum_i w_yi ce_i / N."""
    return (w[y] * ce_terms(z, y)).sum() / len(y)


def cui_sigmoid(z, y, w, gamma=0.0):
    """Cui et al.'s sigmoid / focal: sum over i, j of w_yi * modulator * BCE(z_ij, 1[j = y_i]) over
    the number of positives (N); modulator = exp(-gamma y z - gamma log(1 + exp(-z)))."""
    labels = np.eye(z.shape[1])[y]
    bce = np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))
    modulator = 1.0 if gamma == 0 else np.exp(-gamma * labels * z - gamma * np.log1p(np.exp(-z)))
    return (w[y][:, None] * modulator * bce).sum() / labels.sum()


def prior_adjusted(z, y, tau=1.0):
    """Balanced softmax (Ren et al.; tau 1) and the logit-adjusted loss (Menon et al.): CE(z + tau log pi)."""
    return torch_ce(z + tau * np.log(COUNTS / COUNTS.sum()), y)


def inverse(counts):
    w = 1.0 / counts
    return w / w.sum() * len(counts)


# recipe -> the reference loss at an epoch (of a 200-epoch run, DRW at 160) on logits z, targets y
REFERENCE = {
    "ce": lambda z, y, e: torch_ce(z, y),
    "ce_drw": lambda z, y, e: torch_ce(z, y, drw_weights(e, 160)),
    "focal": lambda z, y, e: focal_ldam_drw(z, y),
    "ldam": lambda z, y, e: ldam(z, y),
    "ldam_drw": lambda z, y, e: ldam(z, y, drw_weights(e, 160)),
    "reweight": lambda z, y, e: torch_ce(z, y, inverse(COUNTS)),
    "reweight_cb": lambda z, y, e: torch_ce(z, y, effective_number(COUNTS)),
    "cb_softmax": lambda z, y, e: cui_softmax(z, y, effective_number(COUNTS)),
    "cb_sigmoid": lambda z, y, e: cui_sigmoid(z, y, effective_number(COUNTS)),
    "cb_focal": lambda z, y, e: cui_sigmoid(z, y, effective_number(COUNTS), gamma=1.0),
    "resample": lambda z, y, e: torch_ce(z, y),  # the sampler re-balances; see the sampler tests
    "resample_cb": lambda z, y, e: torch_ce(z, y),
    "balanced_softmax": lambda z, y, e: prior_adjusted(z, y),
    "logit_adjust": lambda z, y, e: prior_adjusted(z, y, tau=1.0),
    "logit_adjust_posthoc": lambda z, y, e: torch_ce(z, y),  # trained with CE; prediction: test below
    "ssp_rotation": lambda z, y, e: torch_ce(z, y),  # CE on the rotation labels
}


def numeric_grad(f, z, eps=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += eps
        down[idx] -= eps
        g[idx] = (f(up) - f(down)) / (2 * eps)
    return g


def long_tailed_batch(seed, n=48, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.choice(len(COUNTS), size=n, p=COUNTS / COUNTS.sum())
    return rng.normal(size=(n, len(COUNTS))) * scale, y


def ours(recipe, z, y, epoch):
    cfg = resolve([str(ROOT / "conf/methods" / f"{recipe}.yaml")]).train
    loss_fn = create_loss(COUNTS.tolist(), cfg.loss)
    weight = class_weight_at(epoch, drw_epoch(cfg.epochs, cfg.schedule), COUNTS.tolist(), cfg.loss)
    logits = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = loss_fn.double()(logits, torch.tensor(y), None if weight is None else weight.double())
    loss.backward()
    return loss.item(), logits.grad.numpy()


def test_every_recipe_names_its_reference_and_has_a_pinned_formula():
    assert sorted(REFERENCE) == RECIPES, "a recipe without a pinned reference formula (or a stale one)"
    for recipe in RECIPES:
        assert resolve([str(ROOT / "conf/methods" / f"{recipe}.yaml")]).train.reference, recipe


@pytest.mark.parametrize("epoch", [0, 159, 160, 199], ids=lambda e: f"epoch{e}")
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_loss_and_gradient_match_the_reference_formula(recipe, epoch):
    for seed in range(3):
        z, y = long_tailed_batch(seed)
        loss, grad = ours(recipe, z, y, epoch)
        want = REFERENCE[recipe]
        assert loss == pytest.approx(want(z, y, epoch), rel=1e-7)  # per-class buffers are float32
        np.testing.assert_allclose(grad, numeric_grad(lambda v: want(v, y, epoch), z), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("loss, reference", [
    ("ce", lambda z, y, w: torch_ce(z, y, w)),
    ("focal", lambda z, y, w: focal_ldam_drw(z, y, w)),
    ("ldam", lambda z, y, w: ldam(z, y, w)),
    ("sigmoid", lambda z, y, w: cui_sigmoid(z, y, w)),
    ("sigmoid_focal", lambda z, y, w: cui_sigmoid(z, y, w, gamma=1.0)),
])
@pytest.mark.parametrize("weights", ["inverse", "effective_number"])
def test_weighted_losses_reduce_as_their_reference_code(loss, reference, weights):
    w = inverse(COUNTS) if weights == "inverse" else effective_number(COUNTS)
    cfg = resolve([], [("train.loss.name", loss)]).train
    fn = create_loss(COUNTS.tolist(), cfg.loss).double()
    z, y = long_tailed_batch(7)
    logits = torch.tensor(z, requires_grad=True)
    got = fn(logits, torch.tensor(y), torch.tensor(w))
    got.backward()
    assert got.item() == pytest.approx(reference(z, y, w), rel=1e-7)
    np.testing.assert_allclose(logits.grad.numpy(), numeric_grad(lambda v: reference(v, y, w), z), rtol=1e-5,
                               atol=1e-8)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_sigmoid_focal_is_finite_for_confident_logits_at_any_gamma(gamma):
    cfg = resolve([str(ROOT / "conf/methods/cb_focal.yaml")], [("train.loss.focal_gamma", str(gamma))]).train
    fn = create_loss(COUNTS.tolist(), cfg.loss).double()
    z = torch.tensor([[20.0, -20.0, -20.0, -20.0, -20.0], [-20.0, 20.0, -20.0, -20.0, -20.0]], requires_grad=True,
                     dtype=torch.float64)
    y = torch.tensor([0, 1])
    loss = fn(z, y, torch.tensor(effective_number(COUNTS)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert loss.item() == pytest.approx(cui_sigmoid(z.detach().numpy(), y.numpy(), effective_number(COUNTS), gamma),
                                        rel=1e-6)


def test_cui_and_ldam_drw_reweighting_differ_by_the_weight_sum_over_n():
    """cb_softmax (sum / N) and reweight_cb (sum / sum w) on one long-tailed batch: the ratio is
    sum_i w_yi / N, small on a head-heavy batch (why the two are two recipes)."""
    z, y = long_tailed_batch(3)
    cui, ldam_drw = ours("cb_softmax", z, y, 0)[0], ours("reweight_cb", z, y, 0)[0]
    w = effective_number(COUNTS)
    assert cui / ldam_drw == pytest.approx(w[y].sum() / len(y), rel=1e-6)  # float32 weights
    assert cui / ldam_drw < 0.5


def test_posthoc_recipe_predicts_with_logits_minus_the_log_prior():
    cfg = resolve([str(ROOT / "conf/methods/logit_adjust_posthoc.yaml")]).train
    loss_fn = create_loss(COUNTS.tolist(), cfg.loss)
    z, _ = long_tailed_batch(1)
    got = posthoc_adjust(torch.tensor(z), loss_fn.log_prior.double(), cfg.loss.posthoc_tau).numpy()
    np.testing.assert_allclose(got, z - np.log(COUNTS / COUNTS.sum()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("recipe", ["cb_sigmoid", "cb_focal"])
def test_sigmoid_recipes_start_the_head_bias_at_the_uniform_prior_without_decay(recipe):
    from models import create_model
    from pipeline.train import _optimizer

    cfg = resolve([str(ROOT / "conf/methods" / f"{recipe}.yaml")]).train
    loss_fn = create_loss(COUNTS.tolist(), cfg.loss)
    model = create_model("resnet20", num_classes=5, in_channels=3, image_size=8)
    loss_fn.prepare_head(model.head)
    assert torch.allclose(model.head.bias, torch.full((5,), -np.log(4.0)))  # sigmoid(-log(C-1)) = 1/C
    groups = _optimizer(model, loss_fn, cfg, frozen=False).param_groups
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(no_decay) == 1 and no_decay[0]["params"] == [model.head.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# --- samplers ----------------------------------------------------------------------------------

CIFAR_LT = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])


@pytest.mark.parametrize("recipe, class_probability", [
    ("resample", lambda n: np.full(len(n), 1.0 / len(n))),  # 1 / n_c per example: classes equally often
    # LDAM-DRW's ImbalancedDatasetSampler: example weight (1 - b) / (1 - b^n_c), multinomial
    ("resample_cb", lambda n: n * (1 - BETA) / (1 - BETA ** n) / (n * (1 - BETA) / (1 - BETA ** n)).sum()),
])
def test_resampling_draws_each_class_with_its_reference_probability(recipe, class_probability):
    from pipeline.samplers import epoch_indices, example_probabilities

    cfg = resolve([str(ROOT / "conf/methods" / f"{recipe}.yaml")]).train
    labels = np.repeat(np.arange(len(CIFAR_LT)), CIFAR_LT)
    p = example_probabilities(labels, CIFAR_LT, cfg.sampler)
    per_class = np.bincount(labels, weights=p)
    np.testing.assert_allclose(per_class, class_probability(CIFAR_LT.astype(float)), rtol=1e-9)
    drawn = np.concatenate([labels[epoch_indices(cfg.sampler.name, labels, CIFAR_LT, 0, e, cfg=cfg.sampler)] for e in range(4)])
    assert len(drawn) == 4 * len(labels)
    np.testing.assert_allclose(np.bincount(drawn) / len(drawn), per_class, atol=0.006)


def test_effective_number_resampling_is_nearly_but_not_quite_uniform():
    from pipeline.samplers import example_probabilities

    cfg = resolve([str(ROOT / "conf/methods/resample_cb.yaml")]).train
    labels = np.repeat(np.arange(len(CIFAR_LT)), CIFAR_LT)
    per_class = np.bincount(labels, weights=example_probabilities(labels, CIFAR_LT, cfg.sampler))
    assert per_class[0] == pytest.approx(0.119, abs=0.001) and per_class[-1] == pytest.approx(0.094, abs=0.001)


# --- SSP and semi-supervised batches -----------------------------------------------------------

def test_ssp_default_rotates_each_image_once_with_labels_balanced_in_the_batch():
    from pipeline.objectives import OBJECTIVES

    cfg = resolve([str(ROOT / "conf/methods/ssp_rotation.yaml")]).train
    assert cfg.ssp.rotations == "random"
    objective = OBJECTIVES.get("rotation")(cfg)
    objective.begin_epoch(0, 0)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(len(x), 4, requires_grad=True)

    images = torch.randn(10, 3, 5, 5)
    loss_fn = create_loss([10] * 4, cfg.loss)
    _, _, labels = objective(Recorder(), loss_fn, images, torch.zeros(10, dtype=torch.int64), None)
    x = seen[0]
    assert x.shape == images.shape  # B images per step, not 4 B
    for i in range(10):
        assert torch.equal(x[i], torch.rot90(images[i], int(labels[i]), dims=(1, 2)))
    # pretrain_rot.py: the first B of a shuffled [0, 1, 2, 3] * (B // 4 + 1)
    counts = np.bincount(labels.numpy(), minlength=4)
    assert counts.sum() == 10 and counts.max() <= 10 // 4 + 1 and counts.min() >= 10 // 4 + 1 - 2
    many = [objective(Recorder(), loss_fn, torch.randn(128, 3, 5, 5), torch.zeros(128, dtype=torch.int64), None)[2]
            for _ in range(20)]
    assert all(np.bincount(m.numpy(), minlength=4).min() >= 33 - 4 for m in many)


def test_ssp_all_rotations_remains_an_option():
    from pipeline.objectives import OBJECTIVES

    cfg = resolve([str(ROOT / "conf/methods/ssp_rotation.yaml")], [("train.ssp.rotations", "all")]).train
    objective = OBJECTIVES.get("rotation")(cfg)
    objective.begin_epoch(0, 0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 5, 4))
    _, logits, labels = objective(model, create_loss([1] * 4, cfg.loss), torch.randn(6, 3, 5, 5),
                                  torch.zeros(6, dtype=torch.int64), None)
    assert logits.shape == (24, 4) and labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6


def semi_sets(n_labeled=30, n_pseudo=50):
    from pipeline.data import ImageSet

    lab = ImageSet(torch.zeros(n_labeled, 1, 4, 4, dtype=torch.uint8), torch.tensor([0] * 20 + [1] * 10),
                   [f"l{i}" for i in range(n_labeled)])
    pse = ImageSet(torch.full((n_pseudo, 1, 4, 4), 255, dtype=torch.uint8), torch.tensor([1] * 40 + [0] * 10),
                   [f"u{i}" for i in range(n_pseudo)])
    return lab, pse


def test_semi_default_shuffles_labeled_and_pseudo_labeled_together_with_one_criterion():
    from pipeline.recipes import SEMI_STAGE
    from pipeline.data import Augment, semi_loader
    from pipeline.objectives import OBJECTIVES, phases

    cfg = resolve([str(ROOT / "conf/methods/ce.yaml"), str(SEMI_STAGE)], [("train.semi.pseudo_labels", "x")]).train
    assert cfg.batch_size == 256 and cfg.semi.batches == "union"  # train_semi.py: batch 256
    assert phases(cfg)[0].objective == "classify"  # one criterion over the whole batch
    cfg.batch_size = 16
    lab, pse = semi_sets()
    loader = semi_loader(lab, pse, [20, 10], cfg, Augment([0.5], [0.5], "none"))
    assert loader.counts.tolist() == [30, 50]  # the sampler and the loss see labeled + pseudo-labeled counts
    batches = list(loader.epoch(0))
    assert [len(y) for _, y, _ in batches] == [16] * 5  # one pass over the 80 images of the union
    images = torch.cat([x for x, _, _ in batches])
    assert (images > 0).sum().item() == 50 * 16  # every pseudo-labeled image once (white), the labeled once
    assert 0 < (images[:16] > 0).all(dim=(1, 2, 3)).sum() < 16  # mixed within a batch, not in blocks
    is_pseudo = torch.cat([m for _, _, m in batches])
    assert torch.equal(is_pseudo, (images > 0).all(dim=(1, 2, 3)))  # the loader says which rows are pseudo-labeled
    # the loss of a batch is the recipe's criterion over all of it
    logits = torch.randn(16, 2, dtype=torch.float64)
    y = batches[0][1]
    loss, _, _ = OBJECTIVES.get("classify")(cfg)(lambda x: logits, create_loss([30, 50], cfg.loss), batches[0][0], y, None)
    assert loss.item() == pytest.approx(torch_ce(logits.numpy(), y.numpy()), rel=1e-12)


def test_semi_fixed_share_remains_an_option_with_its_two_term_loss():
    from pipeline.data import Augment, semi_loader
    from pipeline.objectives import OBJECTIVES, phases

    cfg = resolve([str(ROOT / "conf/methods/ce.yaml")], [
        ("train.semi.pseudo_labels", "x"), ("train.semi.batches", "fixed_share"), ("train.batch_size", "10"),
        ("train.semi.unlabeled_share", "0.4"), ("train.semi.unlabeled_weight", "2")]).train
    assert phases(cfg)[0].objective == "fixed_share"
    lab, pse = semi_sets()
    x, y, is_pseudo = next(iter(semi_loader(lab, pse, [20, 10], cfg, Augment([0.5], [0.5], "none")).epoch(0)))
    assert is_pseudo.tolist() == [False] * 6 + [True] * 4 and len(y) == 10
    logits = torch.randn(10, 2, dtype=torch.float64)
    loss, _, _ = OBJECTIVES.get("fixed_share")(cfg)(lambda x: logits, create_loss([20, 10], cfg.loss), x, y, None, is_pseudo)
    z, t = logits.numpy(), y.numpy()
    assert loss.item() == pytest.approx(torch_ce(z[:6], t[:6]) + 2 * torch_ce(z[6:], t[6:]), rel=1e-12)


# --- augmentation -------------------------------------------------------------------------------

def test_random_crop_pads_the_raw_image_with_black_then_normalises():
    from pipeline.data import Augment

    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    augment = Augment(mean, std, "crop", padding=4)
    white = torch.full((400, 3, 8, 8), 255, dtype=torch.uint8)
    out = augment(white, torch.Generator().manual_seed(0))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    raw = out * s + m  # back to [0, 1]
    assert torch.all((raw.abs() < 1e-5) | ((raw - 1).abs() < 1e-5))  # black border or white image, nothing else
    black = (raw.abs() < 1e-5).all(dim=1)  # per pixel
    assert black.any() and not black.all()
    # offsets 0..8 as RandomCrop(8, padding=4): the image's first row lands at 4 - dy (cut at 0), its last at 11 - dy
    white_rows = (~black).any(dim=2)
    first = white_rows.float().argmax(1)
    last = 7 - white_rows.flip(1).float().argmax(1)
    assert set(first.tolist()) == set(range(5)) and set(last.tolist()) == set(range(3, 8))
    eval_out = augment(white, train=False)
    assert torch.allclose(eval_out, (1 - m) / s)


def test_cifar_configs_normalise_with_the_reference_constants():
    from pipeline.data import make_augment

    for dataset in ("cifar10", "cifar10_jpeg", "cifar100"):
        cfg = resolve([str(ROOT / f"conf/datasets/{dataset}.yaml")]).train
        augment = make_augment(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), cfg)
        assert augment.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
        assert augment.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])
    measured = make_augment(torch.full((2, 1, 4, 4), 51, dtype=torch.uint8), resolve([]).train)
    assert measured.mean.flatten().tolist() == pytest.approx([0.2])
