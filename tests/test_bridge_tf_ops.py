"""Issue 24: TFOpLambda and SlicingOpLambda, the TensorFlow ops tf.keras 2.4–2.15 writes as layers.

One tf_keras model (built and saved once) applies the supported TensorFlow functions and operators
to the outputs of convolutions and Dense layers with random non-zero weights, on 4-D images of odd
sizes (the bridge holds them NCHW inside: every axis, perm, shape and slice in the config is a NHWC
one) and on 3-D sequences; op outputs also feed layers with weights (a Conv2D after a transpose, a
reshape or an expand_dims), so a wrong layout changes what follows. Every branch is an output and is
compared with tf_keras loading the same file (Keras 3 has no TFOpLambda).
"""

from __future__ import annotations

import torch  # noqa: F401  (before TensorFlow)

import h5py
import numpy as np
import pytest

from bridge_checks import assert_backward_reaches_every_weight, assert_weights_bit_exact, onnx_runtime_outputs, torch_outputs  # noqa: E402
import keras_zoo  # noqa: E402,F401  (imports tf_keras, after torch)
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers as L  # noqa: E402

from conversion import ConversionError, keras_to_torch, torch_to_keras  # noqa: E402
from conversion import keras_reference  # noqa: E402

TOLERANCE = 1e-4
IMAGE = (5, 7, 3)
SEQ = (6, 5)


def _close(got, expected, what=""):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max()), what


def _branches(image, seq):
    c = L.Conv2D(4, 3, padding="same", name="conv_a")(image)           # 5 x 7 x 4
    d = L.Conv2D(4, 1, name="conv_b")(image)
    s = L.Dense(5, name="dense_seq")(seq)                                # 6 x 5
    out = {}
    # arithmetic operators, constants on either side
    x = tf.nn.relu(c + d) * 0.5 - 1.0
    out["operators"] = -(1.0 - x) / 2.0 + 2.0 / (tf.abs(c) + 1.0) + c ** 2 - d * c
    out["floor_ops"] = tf.math.floormod(c, 0.7) + (d // 0.3) * 0.1
    out["math"] = (tf.math.maximum(c, d) + tf.math.minimum(c, 0.1) + tf.math.squared_difference(c, d)
                   + tf.math.add_n([c, d, c]) + tf.math.divide(c, tf.abs(d) + 1.0) + tf.math.pow(tf.abs(d) + 0.5, c))
    out["elementwise"] = (tf.exp(tf.clip_by_value(c, -3.0, 3.0)) + tf.math.log(tf.abs(d) + 1.0)
                          + tf.sqrt(tf.square(c) + 0.1) + tf.math.rsqrt(tf.square(d) + 0.5) + tf.math.sign(c)
                          + tf.math.reciprocal(tf.abs(c) + 2.0) + tf.math.log1p(tf.abs(d)) + tf.math.erf(c))
    # tf.nn activations
    out["activations"] = (tf.nn.relu6(3.0 * c) + tf.nn.sigmoid(c) + tf.tanh(d) + tf.nn.elu(c) + tf.nn.selu(d)
                          + tf.nn.gelu(c) + tf.nn.gelu(d, approximate=True) + tf.nn.leaky_relu(c, alpha=0.15)
                          + tf.nn.silu(d) + tf.nn.softplus(c) + tf.math.softsign(d))
    out["softmax_rows"] = tf.nn.softmax(c, axis=1)                       # a NHWC axis of a 4-D tensor
    out["softmax_last"] = tf.nn.softmax(s) + tf.nn.log_softmax(s, axis=1)
    out["l2_normalize"] = tf.math.l2_normalize(c, axis=[1, 3])
    # reductions over NHWC axes
    out["mean_hw"] = tf.reduce_mean(c, axis=[1, 2], keepdims=True)       # 1 x 1 x 4
    out["sum_channels"] = tf.reduce_sum(c, axis=-1)                     # 5 x 7
    out["max_rows"] = tf.reduce_max(c, axis=1)                          # 7 x 4
    out["min_13"] = tf.reduce_min(d, axis=(1, 3), keepdims=True)         # 1 x 7 x 1
    out["std_cols"] = tf.math.reduce_std(c, axis=2) + tf.math.reduce_variance(d, axis=-2)
    out["logsumexp"] = tf.math.reduce_logsumexp(s, axis=1)
    out["prod"] = tf.math.reduce_prod(1.0 + 0.2 * tf.tanh(c), axis=[2, 3])
    out["mean_all"] = tf.reduce_mean(tf.reshape(c, (-1, 140)), axis=-1, keepdims=True)
    # shapes, each followed by a layer with weights where the result is an image
    out["concat_channels"] = L.Conv2D(3, 2, name="conv_after_concat")(tf.concat([c, d, image], axis=-1))
    out["concat_rows"] = tf.concat([c, d], axis=1)                      # 10 x 7 x 4
    out["stack_1"] = tf.stack([c, d], axis=1)                          # 2 x 5 x 7 x 4
    out["stack_last"] = tf.stack([c, d, c * d], axis=-1)                 # 5 x 7 x 4 x 3
    out["transpose_conv"] = L.Conv2D(2, (3, 2), name="conv_after_transpose")(tf.transpose(c, perm=[0, 2, 1, 3]))
    out["transpose_nchw"] = tf.transpose(c, perm=[0, 3, 1, 2])           # NHWC → NCHW as Keras sees it
    flat = tf.reshape(c, (-1, 35, 4))
    out["reshape_dense"] = L.Dense(3, name="dense_after_reshape")(flat)
    out["reshape_image_conv"] = L.Conv2D(2, 2, name="conv_after_reshape")(tf.reshape(s, [-1, 3, 2, 5]))
    grown = tf.expand_dims(s, -1)                                       # 6 x 5 x 1, an image
    out["expand_conv"] = tf.squeeze(L.Conv2D(1, 3, padding="same", name="conv_after_expand")(grown), axis=-1)
    out["expand_squeeze"] = tf.squeeze(tf.expand_dims(s, 1), axis=[1]) + tf.expand_dims(s, axis=2)[..., 0]
    out["matmul_b"] = tf.matmul(s, s[:, :4], transpose_b=True)         # 6 x 4
    out["matmul_a"] = tf.linalg.matmul(s, seq, transpose_a=True)        # 5 x 5
    out["matmul_4d"] = tf.matmul(c, tf.transpose(d, [0, 1, 3, 2]))     # 5 x 7 x 7
    out["tile_pad"] = tf.tile(s, [1, 2, 1]) + tf.pad(s, [[0, 0], [3, 3], [0, 0]])
    out["where_cast"] = tf.where(c > d, c, d * 2.0) + tf.cast(c > 0.0, tf.float32)
    # slicing (SlicingOpLambda): ints, negative bounds, steps (negative too), ..., newaxis
    out["slice_keep_image"] = L.Conv2D(2, 2, name="conv_after_slice")(c[:, 1:-1, ::2, :])   # 3 x 4 x 4
    out["slice_channel"] = c[..., 0] + c[:, :, :, -1]
    out["slice_reversed"] = c[:, ::-1] + c[:, :, 6:0:-2][:, :, :1]
    out["slice_newaxis"] = c[:, None, 2]                                 # 1 x 7 x 4
    out["slice_newaxis_step"] = d[:, tf.newaxis, 1, :, ::3]              # 1 x 7 x 2
    out["slice_mixed"] = c[:, 4:0:-2, ..., 1:3]
    out["slice_seq"] = s[:, -3:, 1] + s[:, 1, :][:, :3]
    return out


def _model():
    image = L.Input(IMAGE, name="image")
    seq = L.Input(SEQ, name="seq")
    out = _branches(image, seq)
    inner_in = L.Input(SEQ, name="inner_in")
    inner = tf_keras.Model(inner_in, L.Dense(3, name="inner_dense")(tf.nn.relu(inner_in) * 2.0 + 1.0), name="inner")
    out["nested_twice"] = inner(seq) * inner(tf.abs(seq))                # an op model called twice
    model = tf_keras.Model([image, seq], list(out.values()), name="tf_ops")
    keras_zoo.randomize(model, 11)
    return model, list(out)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, names = _model()
    path = tmp_path_factory.mktemp("tf_ops") / "tf_ops.h5"
    model.save(path)
    reloaded, flavour = keras_reference.load_keras_model(path)
    assert flavour == "tf_keras"
    return reloaded, str(path), names


def _inputs(seed, batch=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 1.0, (batch, *IMAGE)).astype(np.float32),
            rng.normal(0.0, 1.0, (batch, *SEQ)).astype(np.float32)]


def test_the_file_holds_op_layers_of_both_classes(saved):
    _, path, _ = saved
    with h5py.File(path) as f:
        config = f.attrs["model_config"]
    config = config.decode() if isinstance(config, bytes) else config
    assert '"class_name": "TFOpLambda"' in config and '"class_name": "SlicingOpLambda"' in config
    assert '"_CONSTANT_VALUE"' in config  # 1.0 - x, 2.0 / x


def test_every_op_branch_matches_tf_keras(saved):
    keras_model, path, names = saved
    module = keras_to_torch(path)
    arrays = _inputs(0)
    expected = [np.asarray(o) for o in keras_model(arrays, training=False)]
    for name, got, want in zip(names, torch_outputs(module, arrays), expected):
        assert np.abs(want).max() > 1e-3, name  # the branch computes something
        _close(got, want, name)


def test_round_trip_is_bit_exact_and_training_reaches_every_weight(saved, tmp_path):
    keras_model, path, names = saved
    out = torch_to_keras(keras_to_torch(path), path, tmp_path / "copy.h5")
    assert len(assert_weights_bit_exact(path, out)) == len(keras_model.weights)

    module = keras_to_torch(path).train()
    arrays = _inputs(1)
    assert_backward_reaches_every_weight(module, [torch.from_numpy(a) for a in arrays], len(keras_model.trainable_weights))
    torch.optim.SGD(module.parameters(), lr=0.05).step()
    trained = torch_to_keras(module.eval(), path, tmp_path / "trained.h5")
    reloaded = tf_keras.models.load_model(trained, compile=False)  # the written file reloads in tf_keras
    for name, want, got in zip(names, torch_outputs(module, arrays), reloaded(arrays, training=False)):
        _close(want, np.asarray(got), f"after training: {name}")


def test_torch_onnx_export_matches_onnxruntime(saved, tmp_path):
    _, path, names = saved
    module = keras_to_torch(path)
    other = _inputs(3, batch=2)  # another batch size: the batch axis stays dynamic
    got = onnx_runtime_outputs(module, tmp_path / "tf_ops.onnx", _inputs(2), other)
    for name, g, e in zip(names, got, torch_outputs(module, other)):
        _close(g, e, f"onnx: {name}")


def test_unsupported_functions_are_refused_by_name(tmp_path):
    seq = L.Input(SEQ)
    x = L.Dense(4, name="d")(seq)
    out = tf.einsum("bij,bkj->bik", x, x) + tf.split(x, 2, axis=2)[0][:, :, :1]
    path = tmp_path / "einsum.h5"
    tf_keras.Model(seq, out).save(path)
    with pytest.raises(ConversionError) as refused:
        keras_to_torch(path)
    assert "TensorFlow function 'einsum' (TFOpLambda 'tf.einsum')" in str(refused.value)
    assert "TensorFlow function 'split' (TFOpLambda 'tf.split')" in str(refused.value)


def test_slices_with_bounds_computed_at_run_time_are_refused(tmp_path):
    seq = L.Input(SEQ)
    n = tf.shape(seq)[1] // 2
    path = tmp_path / "dynamic_slice.h5"
    tf_keras.Model(seq, seq[:, :n]).save(path)
    with pytest.raises(ConversionError, match="shape"):
        keras_to_torch(path)
