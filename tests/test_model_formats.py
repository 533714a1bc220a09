"""Model formats the service trains and serves: `.h5`, `.onnx`, `.pt` (registry checkpoints)."""

from __future__ import annotations

import torch  # noqa: F401  (before anything that may import TensorFlow)

import numpy as np
import onnxruntime as ort
import pytest

from conversion import ConversionError, torch_to_onnx
from conversion.formats import load_trainable, save_checkpoint, save_trained
from models.registry import ModelSpec, RegistryError, build, lookup, register, registered


def test_builtin_models_are_registered_with_their_specs():
    specs = registered()
    assert specs["srkw_cnn"].rows == 607 and specs["srkw_cnn"].cols == 617
    assert specs["small_cnn"].channels == 3


def test_pt_checkpoint_round_trip_keeps_every_weight(tmp_path):
    torch.manual_seed(0)
    net = build("small_cnn", ModelSpec(rows=40, cols=56))
    path = save_checkpoint(net, "small_cnn", ModelSpec(rows=40, cols=56), tmp_path / "tiny_3.pt")
    model = load_trainable(path).eval()
    assert model.input_shapes == [(None, 40, 56, 3)]
    x = torch.rand(2, 40, 56, 3)
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(x.permute(0, 3, 1, 2)))
        assert torch.equal(model(x), expected)
    out = save_trained(model, path, tmp_path / "tiny_4.pt")
    again = load_trainable(out)
    for key, value in net.state_dict().items():
        assert torch.equal(again.net.state_dict()[key], value), key


def test_pt_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil_0.pt"
    torch.save({"format": "orca-ml-checkpoint", "payload": RegistryError("not plain data")}, path)
    with pytest.raises(ConversionError, match="refused to unpickle"):
        load_trainable(path)


def test_pt_with_an_unknown_model_name_is_a_clear_error(tmp_path):
    path = tmp_path / "m_0.pt"
    torch.save({"format": "orca-ml-checkpoint", "version": 1, "registry_name": "no_such_model",
                "spec": {"rows": 8, "cols": 8}, "state_dict": {}}, path)
    with pytest.raises(ConversionError, match="no_such_model"):
        load_trainable(path)


class Unregistered(torch.nn.Module):
    def __init__(self, rows=8, cols=8):
        super().__init__()
        self.fc = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def test_models_outside_the_package_are_named_module_colon_class():
    with pytest.raises(RegistryError, match="not registered"):
        lookup(f"{__name__}:Unregistered")
    with pytest.raises(RegistryError, match="cannot import"):
        lookup("no_such_package.models:Net")
    register("test_formats_unregistered", ModelSpec(rows=8, cols=8))(Unregistered)
    assert lookup(f"{__name__}:Unregistered").name == "test_formats_unregistered"


def test_onnx_model_trains_every_weight_and_is_written_back_as_onnx(tmp_path):
    torch.manual_seed(1)
    net = build("small_cnn", ModelSpec(rows=36, cols=52)).eval()
    source = torch_to_onnx(net, tmp_path / "researcher_0.onnx", example_inputs=(torch.zeros(1, 3, 36, 52),))
    model = load_trainable(source)
    assert model.input_shapes == [(None, 36, 52, 3)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert before and all(p.requires_grad for p in model.parameters())
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(4, 36, 52, 3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model.forward_logits(x), torch.rand(4, 1))
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == set(before)
    model.eval()
    out = save_trained(model, source, tmp_path / "researcher_1.onnx")
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    feed = x.permute(0, 3, 1, 2).numpy()
    with torch.no_grad():
        expected = model.forward_logits(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: feed})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_h5_goes_through_the_keras_bridge_and_formats_cannot_be_mixed(tmp_path, srkw_h5):
    source = srkw_h5  # 67x83, read only (save_trained refuses before writing anything)
    model = load_trainable(source)
    assert model.input_shapes[0] == (None, 67, 83, 3)
    with pytest.raises(ConversionError, match="written back as .h5"):
        save_trained(model, source, tmp_path / "srkw_cnn_1.pt")
    with pytest.raises(ConversionError, match="unknown model format"):
        load_trainable(tmp_path / "model.bin")


def test_registered_model_exports_to_a_keras_h5_the_bridge_reads(tmp_path):
    """Fresh BatchNorms fold into equal conv biases, which the exporter dedups via Identity."""
    from conversion import keras_to_torch, onnx_to_keras

    net = build("small_cnn", ModelSpec(rows=48, cols=60)).eval()
    onnx_path = torch_to_onnx(net, tmp_path / "small.onnx", example_inputs=(torch.zeros(1, 3, 48, 60),))
    keras_model = keras_to_torch(onnx_to_keras(onnx_path, tmp_path / "small_1.h5"))
    x = torch.rand(2, 48, 60, 3)
    with torch.no_grad():
        expected = net(x.permute(0, 3, 1, 2))
        assert (keras_model.forward_logits(x) - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max())


@pytest.mark.slow  # ~9 s: a fresh Python process
def test_a_new_model_of_a_class_outside_models_reloads_in_a_fresh_process(tmp_path):
    """`orca new my_lab.models:MyCNN x_0.pt`: the checkpoint names the import path, so the service (a
    process that never imported my_lab) rebuilds it, and a trained version keeps the same name."""
    import subprocess
    import sys
    import textwrap

    lab = tmp_path / "my_lab"
    lab.mkdir()
    (lab / "__init__.py").write_text("")
    (lab / "models.py").write_text(textwrap.dedent("""
        from torch import nn
        from models.registry import ModelSpec, register

        @register("my_tiny_cnn", ModelSpec(rows=9, cols=11))
        class MyTinyCNN(nn.Module):
            def __init__(self, rows=9, cols=11):
                super().__init__()
                self.conv = nn.Conv2d(3, 2, 3)
                self.head = nn.Linear(2 * (rows - 2) * (cols - 2), 1)

            def forward(self, x):
                return self.head(self.conv(x).flatten(1))
        """))
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": f"{tmp_path}:{repo}", "PATH": "/usr/bin:/bin"}
    new = "from models.create import write_new_model; write_new_model('my_lab.models:MyTinyCNN', 'x_0.pt')"
    load = ("import torch; from conversion.formats import load_trainable; m = load_trainable('x_0.pt'); "
            "print(m.registry_name, tuple(m(torch.zeros(2, 9, 11, 3)).shape))")
    for code in (new, load):  # two processes: the second never imported my_lab before loading
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["my_lab.models:MyTinyCNN", "(2,", "1)"]
