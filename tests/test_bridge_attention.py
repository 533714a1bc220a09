"""Issue 24, attention slice: MultiHeadAttention, Attention and AdditiveAttention.

One model per Keras (tf_keras and Keras 3), with one branch per case, all outputs of the model:
cross-attention with its own key, value_dim ≠ key_dim, use_bias=False, output_shape (an int and a
shape), attention over one axis of a rank-4 input, causal masks, explicit attention masks (one row
masked whole), masks from Embedding(mask_zero) carried into and out of the layer (into a masked
GlobalAveragePooling1D), a shared layer called with different call arguments, returned attention
scores, dropout; Attention (dot, concat, use_scale, causal, implicit and explicit masks) and
AdditiveAttention. Random non-zero weights, batch 3, sequences of 7 and 5, key_dim 6, 3 heads.
Each output is compared with the Keras that wrote the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch  # noqa: F401  (before TensorFlow)

import h5py
import numpy as np
import pytest

from bridge_checks import assert_backward_reaches_every_weight, assert_weights_bit_exact  # noqa: E402
import keras_zoo  # noqa: E402,F401  (imports tf_keras after torch)
import tf_keras  # noqa: E402

from conversion import ConversionError, keras_to_torch, torch_to_keras, torch_to_onnx  # noqa: E402

TOLERANCE = 1e-4
T, S, DIM, VALUE_DIM, KEY_FEATURES, VOCAB = 7, 5, 5, 4, 3, 11
GRID = (3, 7, 4)  # rank-4 input: attention over its axis 2 (7 steps), axis 1 as a batch axis


def _keras3():
    import keras
    if not keras.__version__.startswith("3"):
        pytest.skip("needs Keras 3")
    return keras


def _largest_difference(got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


def _close(got, expected, what=""):
    assert _largest_difference(got, expected) <= TOLERANCE, what


def _build(k):
    """The model's inputs and named outputs, built with the Keras module `k` (tf_keras or keras)."""
    L = k.layers
    q = k.Input((T, DIM), name="q")
    v = k.Input((S, VALUE_DIM), name="v")
    key = k.Input((S, KEY_FEATURES), name="key")
    kv = k.Input((S, DIM), name="kv")  # a key for the dot-product layers (same features as the query)
    m = k.Input((T, S), name="attention_mask")  # 0/1 floats
    grid = k.Input(GRID, name="grid")
    tokens = k.Input((T,), name="tokens")
    tokens2 = k.Input((S,), name="tokens2")
    qm = k.Input((T,), name="query_mask", dtype="bool")
    vm = k.Input((S,), name="value_mask", dtype="bool")
    out = {}
    out["mha_cross"] = L.MultiHeadAttention(3, 6, value_dim=4, name="mha_cross")(q, v, key)
    y, scores = L.MultiHeadAttention(3, 6, use_bias=False, output_shape=(2, 3), name="mha_causal")(
        q, q, use_causal_mask=True, return_attention_scores=True)
    out["mha_causal"], out["mha_causal_scores"] = y, scores
    out["mha_explicit"] = L.MultiHeadAttention(2, 3, output_shape=4, name="mha_explicit")(q, v, attention_mask=m)
    y, scores = L.MultiHeadAttention(2, 3, attention_axes=(2,), name="mha_axis")(grid, grid, return_attention_scores=True)
    out["mha_axis"], out["mha_axis_scores"] = y, scores
    out["mha_dropout"] = L.MultiHeadAttention(3, 6, dropout=0.3, name="mha_dropout")(q, v)
    out["mha_inference_call"] = L.MultiHeadAttention(2, 3, dropout=0.5, name="mha_inference_call")(q, v, training=False)
    shared = L.MultiHeadAttention(2, 4, value_dim=3, name="mha_shared")
    out["mha_shared_plain"] = shared(q, q)
    out["mha_shared_causal"] = shared(q, q, use_causal_mask=True)
    e = L.Embedding(VOCAB, DIM, mask_zero=True, name="emb")(tokens)
    e2 = L.Embedding(VOCAB, DIM, mask_zero=True, name="emb2")(tokens2)
    masked = L.MultiHeadAttention(3, 6, name="mha_masked")(e, e2)
    out["mha_masked"] = masked
    out["mha_masked_average"] = L.GlobalAveragePooling1D(name="masked_average")(  # the query's mask, carried
        L.Add(name="residual")([e, masked]))
    # Keras 3's MultiHeadAttention removes the masks of the tensors it reads when it runs, so the
    # Attention layers read embeddings of their own
    e, e2 = (L.Embedding(VOCAB, DIM, mask_zero=True, name=f"emb_att{i}")(x) for i, x in ((1, tokens), (2, tokens2)))
    out["att_dot"] = L.Attention(name="att_dot")([q, v, kv])
    y, scores = L.Attention(use_scale=True, score_mode="concat", name="att_concat")(
        [q, v, kv], return_attention_scores=True)
    out["att_concat"], out["att_concat_scores"] = y, scores
    out["att_causal"] = L.Attention(use_scale=True, name="att_causal")([q, q], use_causal_mask=True)
    out["att_masked"] = L.Attention(name="att_masked")([e, e2])
    out["att_masked_average"] = L.GlobalAveragePooling1D(name="att_masked_average")(
        L.Attention(name="att_masked_self")([e, e]))
    out["att_explicit"] = L.Attention(name="att_explicit")([q, kv], mask=[qm, vm])
    out["additive"] = L.AdditiveAttention(name="additive")([q, kv])  # tf_keras sizes `scale` by the value
    out["additive_masked"] = L.AdditiveAttention(use_scale=False, dropout=0.2, name="additive_masked")([e, e2])
    out["additive_causal"] = L.AdditiveAttention(name="additive_causal")([q, q], use_causal_mask=True)
    if k is not tf_keras:  # Keras 3 only
        out["mha_gate"] = L.MultiHeadAttention(2, 3, use_gate=True, name="mha_gate")(q, v)
        out["mha_window"] = L.MultiHeadAttention(2, 3, sliding_window=3, name="mha_window")(q, q)
    inputs = [q, v, key, kv, m, grid, tokens, tokens2, qm, vm]
    return k.Model(inputs, list(out.values())), list(out)


def _inputs(rng, batch=3):
    def normal(*shape):
        return rng.normal(0.0, 1.0, (batch, *shape)).astype(np.float32)

    mask = (rng.random((batch, T, S)) > 0.4).astype(np.float32)
    mask[:, :, 0] = 1.0
    mask[0, 2, :] = 0.0  # a query step with nothing to attend to
    tokens = rng.integers(1, VOCAB, (batch, T)).astype(np.float32)
    tokens[0, 5:] = 0  # padding at the end, in the middle and at the start
    tokens[1, 2:4] = 0
    tokens[2, 0] = 0
    tokens2 = rng.integers(1, VOCAB, (batch, S)).astype(np.float32)
    tokens2[0, 3:] = 0
    tokens2[1, 1] = 0
    query_mask = rng.random((batch, T)) > 0.3
    value_mask = rng.random((batch, S)) > 0.3
    value_mask[:, 0] = True
    return [normal(T, DIM), normal(S, VALUE_DIM), normal(S, KEY_FEATURES), normal(S, DIM), mask, normal(*GRID),
            tokens, tokens2, query_mask, value_mask]


def _randomize(model, rng):
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype(np.float32))
    return model


@dataclass
class Saved:
    keras: object  # the Keras module that wrote the file
    model: object
    path: str
    names: list[str]

    def predict(self, arrays, model=None):
        return [np.asarray(o) for o in (model or self.model)(arrays, training=False)]


def _saved(k, folder, seed):
    model, names = _build(k)
    _randomize(model, np.random.default_rng(seed))
    path = folder / f"attention_{'tf_keras' if k is tf_keras else 'keras3'}.h5"
    model.save(path)
    return Saved(k, model, str(path), names)


@pytest.fixture(scope="module")
def tf_keras_file(tmp_path_factory):
    return _saved(tf_keras, tmp_path_factory.mktemp("attention"), 0)


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory):
    return _saved(_keras3(), tmp_path_factory.mktemp("attention"), 1)


def _tensors(arrays):
    return [torch.from_numpy(a) for a in arrays]


def _torch_outputs(module, arrays):
    with torch.no_grad():
        return [o.numpy() for o in module(*_tensors(arrays))]


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_every_attention_branch_matches_the_keras_that_wrote_it(flavour, request):
    saved = request.getfixturevalue(f"{flavour}_file")
    module = keras_to_torch(saved.path)
    arrays = _inputs(np.random.default_rng(2))
    expected = saved.predict(arrays)
    got = _torch_outputs(module, arrays)
    differences = {name: _largest_difference(g, e) for name, g, e in zip(saved.names, got, expected)}
    print(f"\n{flavour} largest differences (relative to max(1, |y|)):",
          ", ".join(f"{n} {d:.1e}" for n, d in differences.items()))
    assert all(d <= TOLERANCE for d in differences.values()), differences
    # the outputs spread: masks and causality change them, so a missed mask would show
    named = dict(zip(saved.names, expected))
    assert not np.allclose(named["mha_shared_plain"], named["mha_shared_causal"], atol=1e-3)
    assert np.abs(named["att_explicit"][~arrays[8]]).max() == 0  # masked query steps are zero in Keras
    assert named["mha_causal_scores"][:, :, 0, 1:].max() == 0  # step 0 sees only itself
    assert named["mha_axis_scores"].shape == (3, GRID[0], 2, GRID[1], GRID[1])


def test_weights_are_trainable_parameters_in_keras_layout(tf_keras_file):
    module = keras_to_torch(tf_keras_file.path)
    params = dict(module.named_parameters())
    assert len(params) == len(tf_keras_file.model.trainable_weights)
    by_name = {w.name.split(":")[0]: w.numpy() for w in tf_keras_file.model.weights}
    shapes = {
        "mha_cross.query.kernel": (DIM, 3, 6), "mha_cross.key.kernel": (KEY_FEATURES, 3, 6),
        "mha_cross.value.kernel": (VALUE_DIM, 3, 4), "mha_cross.value.bias": (3, 4),
        "mha_cross.attention_output.kernel": (3, 4, DIM), "mha_cross.attention_output.bias": (DIM,),
        "mha_causal.attention_output.kernel": (3, 6, 2, 3), "mha_explicit.attention_output.kernel": (2, 3, 4),
        "att_concat.scale": (), "att_concat.concat_score_weight": (), "additive.scale": (DIM,),
    }
    for name, shape in shapes.items():
        p = params[f"graph.layers.{name}"]
        assert tuple(p.shape) == shape and p.requires_grad, name
        layer, sub_var = name.split(".", 1)
        keras_name = f"{layer}/{sub_var.replace('.', '/')}"
        assert np.array_equal(p.detach().numpy(), by_name[keras_name]), name
    assert "graph.layers.mha_causal.query.bias" not in params  # use_bias=False
    assert "graph.layers.additive_masked.scale" not in params  # use_scale=False
    with h5py.File(tf_keras_file.path) as f:
        path = module.keras_weight_paths["graph.layers.mha_cross.key.kernel"]
        assert path.endswith("mha_cross/key/kernel:0") and f[path].shape == (KEY_FEATURES, 3, 6)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_round_trip_is_bit_exact_training_reaches_every_weight_and_keras_reloads_it(flavour, request, tmp_path):
    saved = request.getfixturevalue(f"{flavour}_file")
    path = saved.path
    out = torch_to_keras(keras_to_torch(path), path, tmp_path / "copy.h5")
    assert any("attention_output" in n for n in assert_weights_bit_exact(path, out))

    module = keras_to_torch(path).train()
    arrays = _inputs(np.random.default_rng(3))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    outputs = module.forward_logits(*_tensors(arrays))
    sum(o.square().mean() for o in outputs).backward()
    unreached = [n for n, p in module.named_parameters() if p.grad is None]
    assert not unreached, f"weights backward does not reach: {unreached}"
    # a key projection's bias adds the same q·b to every score of a row, which the softmax removes:
    # its gradient is zero in exact arithmetic (in Keras too); every other weight moves the loss
    flat = [n for n, p in module.named_parameters() if not p.grad.abs().sum() > 0 and not n.endswith(".key.bias")]
    assert not flat, f"weights with a zero gradient: {flat}"
    torch.optim.SGD(module.parameters(), lr=0.05).step()
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters())
    trained = torch_to_keras(module.eval(), path, tmp_path / "trained.h5")
    if flavour == "tf_keras":
        reloaded = tf_keras.models.load_model(trained, compile=False)
    else:  # Keras 3 cannot rebuild its own .h5 holding the `NotEqual` op of a mask: its weights go into the model
        reloaded = saved.model
        reloaded.load_weights(trained)
    try:
        for name, got, want in zip(saved.names, saved.predict(arrays, reloaded), _torch_outputs(module, arrays)):
            _close(got, want, f"{flavour} after training: {name}")
    finally:
        if flavour != "tf_keras":
            reloaded.load_weights(path)


def test_dropout_is_active_in_training_only(tf_keras_file):
    names = tf_keras_file.names
    module = keras_to_torch(tf_keras_file.path)
    assert module.graph.layers["mha_dropout"].dropout == pytest.approx(0.3)
    arrays = _tensors(_inputs(np.random.default_rng(5)))
    index, plain = names.index("mha_dropout"), names.index("mha_cross")
    with torch.no_grad():
        assert torch.equal(module(*arrays)[index], module(*arrays)[index])
        module.train()
        torch.manual_seed(0)
        a, b = module(*arrays)[index], module(*arrays)[index]
        assert torch.equal(module(*arrays)[plain], module.eval()(*arrays)[plain])  # no dropout there
        inference_call = names.index("mha_inference_call")  # called with training=False: never drops
        assert torch.equal(module.train()(*arrays)[inference_call], module.eval()(*arrays)[inference_call])
    assert not torch.equal(a, b)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_attention_inside_a_nested_model_converts_and_round_trips(flavour, tmp_path):
    k = tf_keras if flavour == "tf_keras" else _keras3()
    L = k.layers
    x = k.Input((T, DIM))
    block = k.Model(x, L.MultiHeadAttention(3, 6, value_dim=4, name="mha")(x, x, use_causal_mask=True), name="block")
    outer = k.Input((T, DIM), name="outer")
    model = _randomize(k.Model(outer, L.Dense(2, name="head")(block(outer))), np.random.default_rng(6))
    path = tmp_path / "nested.h5"
    model.save(path)
    arrays = _inputs(np.random.default_rng(7))[:1]
    module = keras_to_torch(path)
    with torch.no_grad():
        _close(module(torch.from_numpy(arrays[0])).numpy(), np.asarray(model(arrays[0])), flavour)
    assert "graph.layers.block.layers.mha.query.kernel" in dict(module.named_parameters())
    out = torch_to_keras(module, path, tmp_path / "copy.h5")
    assert len(assert_weights_bit_exact(path, out, same_config=False)) == 10


def test_torch_onnx_export_matches_onnxruntime(tf_keras_file, tmp_path):
    import onnxruntime as ort

    module = keras_to_torch(tf_keras_file.path)
    onnx_path = torch_to_onnx(module, tmp_path / "attention.onnx",
                              example_inputs=tuple(_tensors(_inputs(np.random.default_rng(8)))))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    other = _inputs(np.random.default_rng(9), batch=5)  # another batch size: the batch axis is dynamic
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), other)})
    for name, g, e, k in zip(tf_keras_file.names, got, _torch_outputs(module, other), tf_keras_file.predict(other)):
        _close(g, e, f"onnx: {name}")
        _close(g, k, f"onnx against tf_keras: {name}")


def test_multi_axis_attention_and_activity_regularizer_are_refused_by_name(tmp_path):
    L = tf_keras.layers
    grid = tf_keras.Input(GRID)
    path = tmp_path / "two_axes.h5"
    tf_keras.Model(grid, L.MultiHeadAttention(2, 3, attention_axes=(1, 2), name="mha_2d")(grid, grid)).save(path)
    with pytest.raises(ConversionError, match=r"'mha_2d'.*attention_axes \(1, 2\).*one axis only"):
        keras_to_torch(path)
    q = tf_keras.Input((T, DIM))
    out = L.MultiHeadAttention(2, 3, activity_regularizer="l2", name="mha_reg")(q, q)
    path = tmp_path / "regularized.h5"
    tf_keras.Model(q, out).save(path)
    with pytest.raises(ConversionError, match=r"'mha_reg'.*MultiHeadAttention with an activity_regularizer"):
        keras_to_torch(path)
