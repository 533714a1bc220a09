"""Issue 12, recurrent slice: Embedding, Masking, SimpleRNN, LSTM, GRU, Bidirectional, TimeDistributed.

Each model has many branches from the same inputs (one Keras build and save per model, not per
case); every branch is an output and is compared with the Keras that wrote the file, on random
non-zero kernels, recurrent kernels and biases, odd step counts and feature sizes. Masked inputs
hold zero tokens / all-zero steps at the end and in the middle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch  # noqa: F401  (before TensorFlow)

import h5py
import numpy as np
import pytest

from bridge_checks import torch_outputs  # noqa: E402
import keras_zoo  # noqa: E402  (imports tf_keras, pinned in requirements.txt: missing, it fails the run)
import tf_keras  # noqa: E402

from conversion import ConversionError, keras_to_torch, torch_to_keras, torch_to_onnx  # noqa: E402
from conversion import keras_reference  # noqa: E402

TOLERANCE = 1e-4
STEPS, FEATURES, VOCAB = 9, 5, 13
TD_SHAPE = (4, 7, 6, 2)  # TimeDistributed over images: steps, rows, cols, channels


def _close(got, expected, what=""):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max()), what


def _tokens(rng, batch=4):
    """Integer tokens as float32 (as the bridge and Keras both take them), zeros = padding: at the
    end, in the middle, at the start and a row with no padding."""
    x = rng.integers(1, VOCAB, (batch, STEPS)).astype(np.float32)
    x[0, 6:] = 0
    x[1, 2:4] = 0
    x[2, :3] = 0
    return x


def _randomize(model, rng):
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype(np.float32))
    return model


def _branches(k, seq, tokens, images, state_source):
    """The recurrent branches, built with the Keras module `k` (tf_keras or Keras 3)."""
    L = k.layers
    out = {
        "simple_rs_back": L.SimpleRNN(6, return_sequences=True, go_backwards=True, activation="relu", name="simple_rs_back")(seq),
        "lstm_hard": L.LSTM(3, recurrent_activation="hard_sigmoid", activation="softsign", go_backwards=True,
                            unroll=True, return_sequences=True, name="lstm_hard")(seq),
        "lstm_dropout": L.LSTM(2, use_bias=False, dropout=0.3, recurrent_dropout=0.2, name="lstm_dropout")(seq),
        "gru_before": L.GRU(3, reset_after=False, return_sequences=True, go_backwards=True, name="gru_before")(seq),
        "bi_sum": L.Bidirectional(L.GRU(2), merge_mode="sum", name="bi_sum")(seq),
        "bi_mul": L.Bidirectional(L.SimpleRNN(2, return_sequences=True), merge_mode="mul", name="bi_mul")(seq),
        # Keras 3 refuses a forward layer that reads backwards; tf_keras flips both
        "bi_ave": L.Bidirectional(L.LSTM(2, go_backwards=k is tf_keras), merge_mode="ave", name="bi_ave")(seq),
        "td_dense": L.TimeDistributed(L.Dense(3, activation="tanh"), name="td_dense")(seq),
    }
    fwd, bwd = L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False), merge_mode=None, name="bi_none")(seq)
    out["bi_none_fwd"], out["bi_none_bwd"] = fwd, bwd
    y, h, c = L.LSTM(5, return_sequences=True, return_state=True, name="lstm_state")(seq)
    out["lstm_state_seq"] = y
    out["lstm_state_read"] = L.Concatenate(name="lstm_states")([h, L.Dense(2, name="after_c")(c)])
    g, gh = L.GRU(2, return_state=True, name="gru_state")(seq)  # reset_after (the default)
    out["gru_state_read"] = L.Add(name="gru_state_sum")([g, gh])
    merged, fh, fc, bh, bc = L.Bidirectional(L.LSTM(2, return_sequences=True, return_state=True), name="bi_state")(seq)
    out["bi_state_seq"] = merged
    out["bi_state_read"] = L.Concatenate(name="bi_states")([fh, fc, bh, bc])
    # initial states fed from another input
    h0 = L.Dense(4, activation="tanh", name="h0")(state_source)
    c0 = L.Dense(4, name="c0")(state_source)
    out["lstm_init"] = L.LSTM(4, name="lstm_init")(seq, initial_state=[h0, c0])
    out["gru_init"] = L.GRU(4, return_sequences=True, name="gru_init")(seq, initial_state=[h0])
    # masks: Embedding(mask_zero) and Masking, carried through Dense and Dropout as Keras carries them
    emb = L.Embedding(VOCAB, FEATURES, mask_zero=True, name="emb")(tokens)
    emb = L.Dropout(0.2, name="emb_dropout")(L.Dense(FEATURES, name="emb_dense")(emb))
    out["masked_average"] = L.GlobalAveragePooling1D(name="masked_average")(
        L.LSTM(3, return_sequences=True, name="masked_lstm_seq")(emb))
    backwards = L.SimpleRNN(3, return_sequences=True, go_backwards=True, name="masked_back_seq")(emb)
    out["masked_gru_last"] = L.GRU(3, go_backwards=True, name="masked_gru_last")(backwards)  # the mask as Keras hands it on
    out["masked_bi_seq"] = L.Bidirectional(L.SimpleRNN(2, return_sequences=True), name="masked_bi_seq")(emb)
    out["masked_bi_last"] = L.Bidirectional(L.LSTM(2), merge_mode="sum", name="masked_bi_last")(emb)
    out["plain_embedding"] = L.Embedding(VOCAB, 3, name="plain_emb")(tokens)
    masked = L.Masking(0.0, name="masking")(seq)
    out["masking_lstm"] = L.LSTM(3, return_sequences=True, name="masking_lstm")(masked)
    # TimeDistributed over images
    t = L.TimeDistributed(L.Conv2D(3, 3, strides=2, padding="same"), name="td_conv")(images)
    t = L.TimeDistributed(L.MaxPooling2D(2), name="td_pool")(t)
    t = L.TimeDistributed(L.Flatten(), name="td_flat")(t)
    out["td_images"] = L.LSTM(2, return_sequences=True, name="td_lstm")(t)
    return out


def _build(k):
    L = k.layers
    seq = k.Input((STEPS, FEATURES), name="seq")
    tokens = k.Input((STEPS,), name="tokens")
    images = k.Input(TD_SHAPE, name="images")
    state_source = k.Input((3,), name="state_source")
    out = _branches(k, seq, tokens, images, state_source)
    del L
    return k.Model([seq, tokens, images, state_source], list(out.values())), list(out)


def _inputs(rng, batch=4):
    seq = rng.normal(0.0, 1.0, (batch, STEPS, FEATURES)).astype(np.float32)
    seq[0, 7:] = 0.0  # all-zero steps for Masking: at the end and in the middle
    seq[1, 3] = 0.0
    return [seq, _tokens(rng, batch), rng.random((batch, *TD_SHAPE), dtype=np.float32),
            rng.normal(0.0, 1.0, (batch, 3)).astype(np.float32)]


@dataclass
class Saved:
    """A model as Keras built it (the parity reference: building and loading each cost seconds),
    the .h5 it wrote and the names of its outputs."""

    model: object
    path: str
    names: list[str]

    def predict(self, arrays, training=False):
        return [np.asarray(o) for o in self.model(arrays, training=training)]

    def predict_with_weights_of(self, h5_path, arrays):
        """The model's outputs with the weights of another .h5 loaded by Keras (then restored)."""
        saved = self.model.get_weights()
        try:
            self.model.load_weights(h5_path)
            return self.predict(arrays)
        finally:
            self.model.set_weights(saved)


@pytest.fixture(scope="module")
def tf_keras_file(tmp_path_factory):
    model, names = _build(tf_keras)
    _randomize(model, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("recurrent") / "recurrent_tf_keras.h5"
    model.save(path)
    return Saved(model, str(path), names)


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory):
    keras = keras_zoo.keras_3()
    model, names = _build(keras)
    _randomize(model, np.random.default_rng(1))
    path = tmp_path_factory.mktemp("recurrent") / "recurrent_keras3.h5"
    model.save(path)
    return Saved(model, str(path), names)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_every_recurrent_branch_matches_the_keras_that_wrote_it(flavour, request):
    saved = request.getfixturevalue("tf_keras_file" if flavour == "tf_keras" else "keras3_file")
    module = keras_to_torch(saved.path)
    arrays = _inputs(np.random.default_rng(2))
    for name, got, expected in zip(saved.names, torch_outputs(module, arrays), saved.predict(arrays)):
        _close(got, expected, f"{flavour}: {name}")


def test_recurrent_weights_are_trainable_parameters_in_keras_layout(tf_keras_file):
    module = keras_to_torch(tf_keras_file.path)
    keras_model = tf_keras_file.model
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert len(params) == len(keras_model.trainable_weights)
    expected = {
        "graph.layers.gru_state.bias": "gru_state/gru_cell/bias",  # reset_after: (2, 3·units)
        "graph.layers.gru_before.bias": "gru_before/gru_cell/bias",
        "graph.layers.bi_state.forward_layer.kernel": "bi_state/forward_lstm/lstm_cell/kernel",
        "graph.layers.bi_state.backward_layer.recurrent_kernel": "bi_state/backward_lstm/lstm_cell/recurrent_kernel",
        "graph.layers.td_dense.layer.kernel": "td_dense/kernel",
        "graph.layers.emb.embeddings": "emb/embeddings",
    }
    with h5py.File(tf_keras_file.path) as f:
        for param, keras_name in expected.items():
            path = module.keras_weight_paths[param]
            pattern = keras_name.replace("_lstm/lstm_cell/", r"_lstm(_\d+)?/lstm_cell(_\d+)?/")
            assert re.search(f"/{pattern}:0$", path), (param, path)  # tf_keras numbers repeated names
            assert np.array_equal(params[param].detach().numpy(), f[path][()]), param
    assert tuple(params["graph.layers.gru_state.bias"].shape) == (2, 6)
    assert tuple(params["graph.layers.gru_before.bias"].shape) == (9,)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_round_trip_is_bit_exact_and_training_reaches_every_weight(flavour, request, tmp_path):
    saved = request.getfixturevalue("tf_keras_file" if flavour == "tf_keras" else "keras3_file")
    path = saved.path
    out = torch_to_keras(keras_to_torch(path), path, tmp_path / "copy.h5")
    with h5py.File(path) as a, h5py.File(out) as b:
        found = []
        a["model_weights"].visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
        assert any("backward_lstm" in n for n in found)
        for n in found:
            assert a["model_weights"][n][()].tobytes() == b["model_weights"][n][()].tobytes(), n

    module = keras_to_torch(path).train()
    arrays = _inputs(np.random.default_rng(3))
    arrays[1] = _tokens(np.random.default_rng(4))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    outputs = module.forward_logits(*[torch.from_numpy(a) for a in arrays])
    loss = sum(o.square().mean() for o in outputs)
    loss.backward()
    no_grad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"weights backward does not reach: {no_grad}"
    torch.optim.SGD(module.parameters(), lr=0.05).step()
    trained = torch_to_keras(module.eval(), path, tmp_path / "trained.h5")
    expected = torch_outputs(module, arrays)
    for name, got, want in zip(saved.names, saved.predict_with_weights_of(trained, arrays), expected):
        _close(want, got, f"{flavour} after training: {name}")
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters())


def test_training_mode_applies_recurrent_dropout_and_inference_is_deterministic(tf_keras_file):
    names = tf_keras_file.names
    module = keras_to_torch(tf_keras_file.path)
    index = names.index("lstm_dropout")
    layer = module.graph.layers["lstm_dropout"]
    assert (layer.dropout, layer.recurrent_dropout) == (pytest.approx(0.3), pytest.approx(0.2))
    arrays = [torch.from_numpy(a) for a in _inputs(np.random.default_rng(5))]
    with torch.no_grad():
        assert torch.equal(module(*arrays)[index], module(*arrays)[index])
        module.train()
        torch.manual_seed(0)
        a, b = module(*arrays)[index], module(*arrays)[index]
        # the layers without dropout compute the same in both modes
        _close(module(*arrays)[names.index("lstm_init")].numpy(),
               module.eval()(*arrays)[names.index("lstm_init")].numpy())
    assert not torch.equal(a, b)


def test_stateful_lstm_runs_from_zero_states_on_every_call(tmp_path):
    """A stateful layer (fixed batch) converts; each call starts from zeros, as Keras after reset_states()."""
    model = tf_keras.Sequential([tf_keras.layers.LSTM(4, stateful=True, return_sequences=True,
                                                      batch_input_shape=(3, STEPS, FEATURES), name="stateful"),
                                 tf_keras.layers.GRU(3, stateful=True, name="stateful_gru")])
    _randomize(model, np.random.default_rng(6))
    path = tmp_path / "stateful.h5"
    model.save(path)
    module = keras_to_torch(path)
    x = np.random.default_rng(7).normal(size=(3, STEPS, FEATURES)).astype(np.float32)
    keras_model, _ = keras_reference.load_keras_model(path)
    first = np.asarray(keras_model(x))
    second = np.asarray(keras_model(x))
    assert not np.allclose(first, second)  # Keras carried its state over
    with torch.no_grad():
        for _ in range(2):
            _close(module(torch.from_numpy(x)).numpy(), first, "stateful")
        _close(module(torch.from_numpy(x[:2])).numpy(), first[:2], "another batch size")


def test_hard_sigmoid_gate_follows_the_keras_major_of_the_file(tf_keras_file, keras3_file):
    """Keras 2 hard_sigmoid is clip(0.2·x + 0.5), Keras 3's relu6(x + 3)/6: the file's Keras decides."""
    slopes = [keras_to_torch(s.path).graph.layers["lstm_hard"].gate_activation.slope for s in (tf_keras_file, keras3_file)]
    assert slopes == [pytest.approx(0.2), pytest.approx(1 / 6)]


def test_torch_onnx_export_of_recurrent_model_matches_onnxruntime(tf_keras_file, tmp_path):
    import onnxruntime as ort

    names = tf_keras_file.names
    module = keras_to_torch(tf_keras_file.path)
    arrays = _inputs(np.random.default_rng(8), batch=3)
    onnx_path = torch_to_onnx(module, tmp_path / "recurrent.onnx",
                              example_inputs=tuple(torch.from_numpy(a) for a in arrays))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    other = _inputs(np.random.default_rng(9), batch=5)  # another batch size: the batch axis is dynamic
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), other)})
    for name, g, e in zip(names, got, torch_outputs(module, other)):
        _close(g, e, f"onnx: {name}")


def test_unsupported_wrapped_layer_is_named(tmp_path):
    inp = tf_keras.Input((STEPS, FEATURES))
    out = tf_keras.layers.TimeDistributed(tf_keras.layers.Lambda(lambda t: t * 2), name="td_lambda")(inp)
    path = tmp_path / "td_lambda.h5"
    tf_keras.Model(inp, out).save(path)
    with pytest.raises(ConversionError, match=r"Lambda layer wrapped in TimeDistributed 'td_lambda'"):
        keras_to_torch(path)


def test_keras_zoo_recurrent_model_is_registered():
    assert "recurrent_zoo" in keras_zoo.BUILDERS
