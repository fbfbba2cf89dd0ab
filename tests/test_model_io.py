"""The exported model format: architecture spec + state dict, read back with weights_only; nothing
in a model's files can make the loader run code."""
import json
import os
import pickle

import pytest
import torch

from pipeline import model_io
from pipeline.model_io import ModelFormatError

SPEC = model_io.spec_of("resnet20", num_classes=3, in_channels=1, image_size=8, head="linear", head_scale=30.0,
                        classifier_only=False, mean=[0.5], std=[0.25])


def test_a_saved_model_loads_back_with_the_same_outputs(tmp_path):
    module = model_io.build(SPEC).eval()
    model_io.save(tmp_path, SPEC, module)
    loaded = model_io.load(tmp_path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), module(x))
    assert json.loads((tmp_path / "spec.json").read_text()) == SPEC


@pytest.mark.parametrize("spec", [
    {**SPEC, "architecture": "resnet32", "posthoc_tau": 1.0},
    {**SPEC, "architecture": "unet_ae", "classifier_only": True, "head": "normed"},
])
def test_wrapped_and_autoencoder_exports_round_trip(tmp_path, spec):
    module = model_io.build(spec).eval()
    model_io.save(tmp_path, spec, module)
    assert torch.equal(model_io.load(tmp_path)(torch.ones(2, 1, 8, 8)), module(torch.ones(2, 1, 8, 8)))


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARK', '/tmp/evil-mark')}",))


def test_weights_that_unpickle_code_are_refused_and_never_run(tmp_path, monkeypatch):
    mark = tmp_path / "ran"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    model_io.save(tmp_path, SPEC, model_io.build(SPEC))
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    torch.save({**state, "extra": Evil()}, tmp_path / "weights.pt")  # a state dict with a payload inside
    with pytest.raises(ModelFormatError, match="weights.pt: not a plain state dict"):
        model_io.load(tmp_path)
    assert not mark.exists()
    (tmp_path / "weights.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFormatError, match="not a plain state dict"):
        model_io.load(tmp_path)
    assert not mark.exists()


def test_a_spec_naming_no_registered_architecture_is_refused(tmp_path):
    model_io.save(tmp_path, SPEC, model_io.build(SPEC))
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, "architecture": "os.system"}))
    with pytest.raises(ModelFormatError, match="unknown architecture 'os.system'"):
        model_io.load(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, "code": "print(1)"}))
    with pytest.raises(ModelFormatError, match=r"unknown keys \['code'\]"):
        model_io.load(tmp_path)


def test_weights_of_another_shape_are_refused_naming_the_architecture(tmp_path):
    model_io.save(tmp_path, SPEC, model_io.build(SPEC))
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, "num_classes": 5}))
    with pytest.raises(ModelFormatError, match="does not fit resnet20"):
        model_io.load(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"num_classes": 10 ** 9}, "num_classes=1000000000 is not an integer"),
    ({"in_channels": "3"}, "in_channels='3' is not an integer"),
    ({"mean": [0.5, 0.5]}, "mean must be 1 numbers"),
    ({"head": "os.system"}, "head 'os.system'"),
])
def test_a_spec_with_absurd_values_is_refused_before_anything_is_built(tmp_path, change, message):
    model_io.save(tmp_path, SPEC, model_io.build(SPEC))
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, **change}))
    with pytest.raises(ModelFormatError, match=message):
        model_io.load(tmp_path)


def test_an_oversized_spec_value_is_echoed_cut_short(tmp_path):
    model_io.save(tmp_path, SPEC, model_io.build(SPEC))
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, "mean": ["9" * 1000] * 30_000}))
    with pytest.raises(ModelFormatError, match=r"mean must be 1 numbers, got \['999") as e:
        model_io.load(tmp_path)
    assert len(str(e.value)) < 400 and "characters)" in str(e.value)


def test_a_spec_nested_past_the_json_parser_is_a_format_error(tmp_path):
    model_io.save(tmp_path, SPEC, model_io.build(SPEC))
    (tmp_path / "spec.json").write_text("[" * 200_000)
    with pytest.raises(ModelFormatError, match="no readable spec.json: RecursionError"):
        model_io.load(tmp_path)
