"""How the step runs (pipeline.accel) never changes what it computes beyond float rounding: sums kept
on the device equal the per-step host sums, channels-last equals NCHW, bf16 autocast stays close to
fp32, and ``auto`` resolves per device."""
import copy

import pytest
import torch

from models import create_model
from pipeline.accel import Accel, accel_for, inference_batch
from pipeline.config import ConfigError, DataConfig, RuntimeConfig, TrainConfig, resolve
from pipeline.data import Augment, ImageSet, MemoryLoader
from pipeline.losses import create_loss
from pipeline.objectives import Classify
from pipeline.train import predict, train_one_epoch


def setup(seed=0, n=96):
    gen = torch.Generator().manual_seed(seed)
    data = ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen),
                    torch.randint(0, 4, (n,), generator=gen), [str(i) for i in range(n)])
    cfg = TrainConfig(batch_size=32, data=DataConfig(augment="crop_flip"), seed=seed)
    counts = torch.bincount(data.labels, minlength=4).tolist()
    torch.manual_seed(seed)
    model = create_model("resnet32", num_classes=4, in_channels=3, image_size=16)
    loader = MemoryLoader(data, counts, cfg, Augment([0.5] * 3, [0.25] * 3, "crop_flip", 2))
    return model, loader, create_loss(counts, cfg.loss), cfg


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def test_epoch_sums_kept_on_the_device_equal_the_per_step_host_sums():
    model, loader, loss_fn, cfg = setup()
    twin = copy.deepcopy(model)
    loss_sum, correct, seen = train_one_epoch(model, Classify(cfg), loss_fn, sgd(model), loader, 0, None, "cpu")
    # the loop as it was: .item() after every step
    twin.train()
    opt, want_loss, want_correct, want_seen = sgd(twin), 0.0, 0, 0
    for x, y in loader.epoch(0):
        logits = twin(x)
        loss = loss_fn(logits, y, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        want_loss += loss.item() * len(y)
        want_correct += (logits.argmax(1) == y).sum().item()
        want_seen += len(y)
    assert (loss_sum, correct, seen) == (want_loss, want_correct, want_seen)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_channels_last_trains_and_predicts_as_nchw_up_to_float_rounding():
    model, loader, loss_fn, cfg = setup(n=32)  # one step: rounding, not a diverging trajectory, is compared
    twin = copy.deepcopy(model)
    accel = Accel(channels_last=True)
    a = train_one_epoch(accel.model(model), Classify(cfg), loss_fn, sgd(model), loader, 0, None, "cpu", accel=accel)
    b = train_one_epoch(twin, Classify(cfg), loss_fn, sgd(twin), loader, 0, None, "cpu")
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1:] == b[1:]
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=2e-4)
    kernels = [p for p in model.parameters() if p.dim() == 4]
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
    assert not all(k.is_contiguous(memory_format=torch.channels_last) for k in twin.parameters() if k.dim() == 4)
    got = predict(model, loader.data, loader.augment, 50, "cpu", accel)
    want = predict(twin, loader.data, loader.augment, 50, "cpu")
    assert abs(got - want).max() < 1e-3 * abs(want).max()  # float rounding of the logits' scale


def test_bf16_autocast_stays_near_fp32_and_returns_fp32_logits():
    model, loader, loss_fn, cfg = setup()
    twin = copy.deepcopy(model)
    bf16 = Accel(precision="bf16")
    a = train_one_epoch(model, Classify(cfg), loss_fn, sgd(model), loader, 0, None, "cpu", accel=bf16)
    b = train_one_epoch(twin, Classify(cfg), loss_fn, sgd(twin), loader, 0, None, "cpu")
    assert a[0] != b[0] and a[0] == pytest.approx(b[0], rel=0.05)  # really in bf16, and close
    logits = predict(twin, loader.data, loader.augment, 50, "cpu", bf16)
    want = predict(twin, loader.data, loader.augment, 50, "cpu")
    assert logits.dtype == "float32" and not (logits == want).all()
    assert abs(logits - want).max() < 0.03 * abs(want).max()  # bf16 keeps ~3 significant digits per layer
    assert (logits.argmax(1) == want.argmax(1)).mean() > 0.9


def test_auto_is_fp32_nchw_on_the_cpu_and_bf16_channels_last_on_cuda():
    t = RuntimeConfig()
    assert accel_for(t, torch.device("cpu")) == Accel("fp32", False, False)
    assert accel_for(t, torch.device("cuda", 0)) == Accel("bf16", True, False)
    forced = RuntimeConfig(precision="bf16", channels_last="on", compile=True)
    assert accel_for(forced, torch.device("cpu")) == Accel("bf16", True, True)
    assert accel_for(RuntimeConfig(channels_last="off"), torch.device("cuda", 0)).channels_last is False


def test_bf16_is_native_only_with_avx512_bf16_or_amx_flags():
    from pipeline.accel import cpu_has_bf16

    assert not cpu_has_bf16("processor : 0\nflags : fpu sse2 avx avx2 fma avx512f avx512bw\n")
    assert cpu_has_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags : fpu avx2 amx_tile amx_bf16\n")
    assert not cpu_has_bf16("")  # flags unknown (not Linux): assume emulated


def test_bf16_asked_on_a_cpu_that_emulates_it_warns_naming_the_key(monkeypatch):
    import warnings

    from pipeline import accel

    monkeypatch.setattr(accel, "_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"train.runtime.precision=bf16 on a CPU without bf16 instructions"):
        accel_for(RuntimeConfig(precision="bf16"), torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto, fp32, or bf16 on a GPU: nothing to say
        accel_for(RuntimeConfig(), torch.device("cpu"))
        accel_for(RuntimeConfig(precision="bf16"), torch.device("cuda", 0))
        monkeypatch.setattr(accel, "_native_bf16", lambda: True)
        accel_for(RuntimeConfig(precision="bf16"), torch.device("cpu"))


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match="train.runtime.precision"):
        resolve([], [("train.runtime.precision", "fp8")])


def test_inference_batches_default_by_device_and_a_given_size_wins():
    assert inference_batch(0, "cpu") == 128 and inference_batch(0, torch.device("cuda", 1)) == 512
    assert inference_batch(300, "cpu") == 300 == inference_batch(300, "cuda")
    cfg = resolve([], [])
    assert cfg.train.data.eval_batch_size == 0 == cfg.pseudolabel.batch_size  # the defaults are the device's
    for key in ("train.data.eval_batch_size", "pseudolabel.batch_size"):
        with pytest.raises(ConfigError, match=key):
            resolve([], [(key, "-1")])


def test_prediction_does_not_depend_on_the_inference_batch():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_channels=3, image_size=8).eval()
    data = ImageSet(torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8), torch.zeros(37, dtype=torch.int64),
                    [str(i) for i in range(37)])
    augment = Augment([0.5] * 3, [0.25] * 3, "none")
    with torch.inference_mode():
        small, large = (predict(model, data, augment, b, "cpu") for b in (5, 512))
    assert torch.allclose(torch.from_numpy(small), torch.from_numpy(large), atol=1e-5)


@pytest.mark.slow
def test_a_compiled_step_trains_as_the_eager_one():
    model, loader, loss_fn, cfg = setup(n=32)
    twin = copy.deepcopy(model)
    a = train_one_epoch(Accel(compile=True).step_model(model), Classify(cfg), loss_fn, sgd(model), loader, 0, None,
                        "cpu")
    b = train_one_epoch(twin, Classify(cfg), loss_fn, sgd(twin), loader, 0, None, "cpu")
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1:] == b[1:]
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-3)


def test_an_epochs_augmentation_drawn_up_front_is_the_batch_by_batch_draw():
    from pipeline.data import epoch_generator
    from pipeline.samplers import epoch_indices

    _, loader, _, cfg = setup(n=90)  # 32 + 32 + 26: a short last batch
    got = list(loader.epoch(3))
    gen = epoch_generator(cfg.seed, 3, 0)
    idx = torch.from_numpy(epoch_indices(cfg.sampler.name, loader.labels_np, loader.counts, cfg.seed, 3, 0, 1, cfg.sampler))
    want = [(loader.augment(loader.data.images[t], gen), loader.data.labels[t]) for t in idx.split(32)]
    assert len(got) == len(want) == 3
    for (x, y), (x0, y0) in zip(got, want):
        assert torch.equal(x, x0) and torch.equal(y, y0)
