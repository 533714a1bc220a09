"""Keras models that exercise every layer the bridge supports, saved as .h5 for the tests.

Weights and biases are random and non-zero, inputs non-square. Imports TensorFlow (after torch).
"""

from __future__ import annotations

import os

import torch  # noqa: F401  (before TensorFlow)
import torch._dynamo  # noqa: F401  (before TensorFlow, see docs/design.md)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers as L  # noqa: E402

ROWS, COLS = 21, 26


def keras_3():
    """The `keras` package, Keras 3 as requirements.txt pins it, imported on first use (after tf_keras):
    a missing or older Keras fails the test that asks, never skips it."""
    import keras

    assert keras.__version__.startswith("3."), f"requirements.txt pins Keras 3; this is Keras {keras.__version__}"
    return keras


def randomize(model, seed: int = 0):
    """Every weight random and non-zero; BN and Normalization variances positive; integer
    counters (Normalization's `count`) left alone."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        name = w.name
        if not w.dtype.is_floating:
            continue
        if "variance" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "gamma" in name:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        w.assign(value.astype(np.float32))
    return model


def _compile(model, optimizer="adam"):
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    return model


def conv_zoo():
    """Functional CNN: every convolution, pooling, padding and merge layer, BN, ReLU variants."""
    inp = L.Input((ROWS, COLS, 3), name="spectrogram")
    x = L.Conv2D(8, 3, strides=2, padding="same", name="conv_same_s2")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.05, name="relu6ish")(x)
    a = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    b = L.SeparableConv2D(16, 3, padding="same", dilation_rate=2, name="separable")(x)
    x = L.Add(name="add")([a, b])
    x = L.Conv2D(16, 3, padding="valid", dilation_rate=(2, 1), use_bias=False, name="conv_dilated_nobias")(x)
    x = L.LeakyReLU(alpha=0.2, name="leaky")(x)
    x = L.ZeroPadding2D(((1, 2), (0, 1)), name="zeropad")(x)
    x = L.Cropping2D(((0, 1), (1, 0)), name="crop")(x)
    m = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool_same")(x)
    v = L.AveragePooling2D(3, strides=2, padding="same", name="avgpool_same")(x)
    x = L.Concatenate(name="concat")([m, v])
    x = L.UpSampling2D((2, 3), name="upsample")(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="deconv_same")(x)
    y = L.Conv2DTranspose(8, (2, 3), strides=(1, 2), padding="valid", name="deconv_valid")(x)
    y = L.MaxPooling2D(2, name="maxpool_valid")(y)
    y = L.AveragePooling2D(2, name="avgpool_valid")(y)
    p = L.Conv2D(8, 1, name="proj_a")(x)
    q = L.Conv2D(8, 1, name="proj_b")(x)
    x = L.Subtract(name="subtract")([p, q])
    x = L.Multiply(name="multiply")([x, p])
    x = L.Average(name="average")([x, q])
    x = L.Maximum(name="maximum")([x, p])
    x = L.SpatialDropout2D(0.3, name="spatial_dropout")(x)
    g1 = L.GlobalAveragePooling2D(name="gap")(x)
    g2 = L.GlobalMaxPooling2D(name="gmp")(y)
    g = L.Concatenate(name="concat_vec")([g1, g2])
    g = L.BatchNormalization(name="bn_vec")(g)
    g = L.Dense(12, activation="tanh", name="dense_tanh")(g)
    g = L.Dropout(0.4, name="dropout")(g)
    out = L.Dense(1, activation="sigmoid", name="score")(g)
    return _compile(randomize(tf_keras.Model(inp, out, name="conv_zoo")))


ACTIVATIONS = ["linear", "relu", "sigmoid", "softmax", "tanh", "elu", "selu", "softplus", "swish", "hard_sigmoid"]


def activation_zoo():
    """Sequential: Flatten, Reshape and every Activation the bridge maps, ending in softmax."""
    model = tf_keras.Sequential(name="activation_zoo")
    model.add(L.Conv2D(6, 3, padding="same", activation="relu", input_shape=(ROWS, COLS, 2), name="c"))
    model.add(L.MaxPooling2D(3, name="pool"))
    model.add(L.Flatten(name="flatten"))
    model.add(L.Dense(24, name="d0"))
    for name in ACTIVATIONS:
        model.add(L.Activation(name, name=f"act_{name}"))
        model.add(L.Dense(24, name=f"d_{name}"))
    model.add(L.Reshape((4, 6, 1), name="reshape"))
    model.add(L.Conv2D(3, 2, name="c_after_reshape"))
    model.add(L.Flatten(name="flatten2"))
    model.add(L.Dense(3, activation="softmax", name="probs"))
    return _compile(randomize(model, 1), optimizer="sgd")


def nested_multi():
    """Nested models (Sequential in Functional, Functional in Functional), a shared layer, a
    shared input and two outputs."""
    inp = L.Input((ROWS, COLS, 3), name="image")
    block = tf_keras.Sequential([L.Conv2D(4, 3, padding="same", input_shape=(ROWS, COLS, 3), name="inner_conv"),
                                 L.BatchNormalization(name="inner_bn"), L.Activation("relu", name="inner_relu")],
                                name="block")
    head_in = L.Input((4,), name="head_in")
    head = tf_keras.Model(head_in, L.Dense(2, name="head_dense")(head_in), name="head")
    x = block(inp)
    pooled = L.GlobalAveragePooling2D(name="pool")(x)
    shared = L.Dense(4, activation="relu", name="shared_dense")
    u = shared(pooled)
    w = shared(L.GlobalMaxPooling2D(name="maxpool")(x))  # the same Dense, a second call
    first = L.Dense(1, activation="sigmoid", name="first")(L.Add(name="sum")([u, w]))
    second = L.Activation("softmax", name="second")(head(u))
    return _compile(randomize(tf_keras.Model(inp, [first, second], name="nested_multi"), 2))


# Every activation string tf_keras' `activations.get` accepts (see conversion.layers.ACTIVATION_NAMES).
KERAS2_ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "sigmoid", "hard_sigmoid", "softmax", "log_softmax",
                      "tanh", "elu", "selu", "gelu", "softplus", "softsign", "swish", "silu", "mish", "exponential"]


TF2ONNX_LACKS: set[str] = set()  # gelu's Erfc is exported by conversion.onnx_export's own tf2onnx handler


def activation_strings_zoo():
    """Functional: one branch per activation string, as `activation=` and as an Activation layer,
    all from the same features and concatenated (a saturated branch does not stop the others' gradient)."""
    inp = L.Input((ROWS, COLS, 2), name="image")
    x = L.Conv2D(4, (3, 5), strides=(2, 3), name="c")(inp)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(9, name="d0")(x)
    branches = []
    for name in KERAS2_ACTIVATIONS:
        if name in TF2ONNX_LACKS:
            continue
        branches.append(L.Dense(5, activation=name, name=f"dense_{name}")(x))
        branches.append(L.Activation(name, name=f"act_{name}")(L.Dense(5, name=f"pre_{name}")(x)))
    x = L.Concatenate(name="all")(branches)
    out = L.Dense(1, activation="sigmoid", name="score")(x)
    model = tf_keras.Model(inp, out, name="activation_strings_zoo")
    randomize(model, 4)
    return _compile(model)


def advanced_zoo():
    """Functional: activation layers (PReLU, ELU, ThresholdedReLU, Softmax), Permute, RepeatVector,
    LayerNormalization, on odd, non-square shapes."""
    inp = L.Input((ROWS, COLS, 3), name="image")
    x = L.Conv2D(5, 3, name="conv_a")(inp)                              # 19 x 24 x 5
    x = L.PReLU(shared_axes=[1, 2], name="prelu_shared")(x)
    y = L.Conv2D(4, (3, 2), padding="same", name="conv_b")(x)           # 19 x 24 x 4
    y = L.PReLU(name="prelu_full")(y)
    y = L.ELU(alpha=0.7, name="elu")(y)
    y = L.ThresholdedReLU(theta=0.15, name="thresholded")(y)
    s_rows = L.Softmax(axis=-3, name="softmax_rows")(y)
    s_hw = L.Softmax(axis=[1, 2], name="softmax_hw")(y)
    y = L.Add(name="sum")([y, s_rows, s_hw])
    p = L.Permute((2, 3, 1), name="permute")(y)                         # 24 x 4 x 19
    p = L.LayerNormalization(axis=[1, 3], epsilon=1e-2, name="ln_13")(p)
    p = L.PReLU(shared_axes=[1], name="prelu_after_permute")(p)
    p = L.Conv2D(6, (3, 2), name="conv_c")(p)                           # 22 x 3 x 6
    g = L.GlobalAveragePooling2D(name="gap")(p)
    g = L.Dense(7, name="dense_a")(g)
    r = L.RepeatVector(3, name="repeat")(g)                             # 3 x 7
    r = L.LayerNormalization(name="ln_last")(r)
    r = L.LayerNormalization(axis=1, center=False, name="ln_nocenter")(r)
    r = L.LayerNormalization(axis=[1, 2], scale=False, epsilon=1e-5, name="ln_noscale")(r)
    r = L.PReLU(name="prelu_seq")(r)
    r = L.Permute((2, 1), name="permute_seq")(r)                        # 7 x 3
    r = L.Softmax(axis=1, name="softmax_seq")(r)
    f = L.Flatten(name="flat")(r)
    out = L.Dense(3, name="logits")(f)
    out = L.Softmax(name="probs")(out)
    return _compile(randomize(tf_keras.Model(inp, out, name="advanced_zoo"), 5))


STEPS = 37


def conv1d_zoo():
    """Functional over (steps, channels): Conv1D (valid, same, causal; strides, dilation), 1-D
    pooling, padding, cropping, upsampling and global pooling."""
    inp = L.Input((STEPS, 3), name="signal")
    x = L.Conv1D(5, 4, strides=2, padding="same", name="conv_same_s2")(inp)            # 19 x 5
    x = L.Conv1D(6, 3, padding="causal", dilation_rate=2, name="conv_causal_d2")(x)    # 19 x 6
    x = L.BatchNormalization(name="bn")(x)
    x = L.SpatialDropout1D(0.25, name="spatial_dropout")(x)
    c = L.Conv1D(6, 2, strides=2, padding="causal", use_bias=False, name="conv_causal_s2")(x)  # 10 x 6
    x = L.Conv1D(4, 3, strides=3, activation="relu", name="conv_valid_s3")(x)          # 6 x 4
    m = L.MaxPooling1D(3, strides=2, padding="same", name="maxpool_same")(c)           # 5 x 6
    a = L.AveragePooling1D(3, strides=2, padding="same", name="avgpool_same")(c)       # 5 x 6
    y = L.Concatenate(name="concat")([m, a])                                            # 5 x 12
    y = L.ZeroPadding1D((1, 2), name="zeropad")(y)                                      # 8 x 12
    y = L.Cropping1D((2, 1), name="crop")(y)                                            # 5 x 12
    y = L.UpSampling1D(3, name="upsample")(y)                                           # 15 x 12
    y = L.Conv1D(4, 5, padding="same", dilation_rate=3, name="conv_same_d3")(y)        # 15 x 4
    y = L.MaxPooling1D(2, name="maxpool_valid")(y)                                      # 7 x 4
    y = L.AveragePooling1D(3, strides=1, name="avgpool_valid")(y)                       # 5 x 4
    g1 = L.GlobalAveragePooling1D(name="gap")(y)
    g2 = L.GlobalMaxPooling1D(name="gmp")(x)
    g3 = L.Flatten(name="flat")(L.GlobalMaxPooling1D(keepdims=True, name="gmp_keep")(y))
    g4 = L.Flatten(name="flat_seq")(x)
    g = L.Concatenate(name="features")([g1, g2, g3, g4])
    out = L.Dense(1, activation="sigmoid", name="score")(g)
    return _compile(randomize(tf_keras.Model(inp, out, name="conv1d_zoo"), 7))


def more_layers_zoo():
    """Two inputs: over (steps, channels) SeparableConv1D (causal, same), DepthwiseConv1D, grouped
    Conv1D, Conv1DTranspose (output_padding, valid), adapted Normalization, Rescaling,
    UnitNormalization, LayerNormalization without weights, Dot, the noise layers, activity
    regularization; over an image grouped Conv2D and Conv2DTranspose with output_padding."""
    signal = L.Input((STEPS, 4), name="signal")
    norm = L.Normalization(name="norm")
    norm.adapt(np.random.default_rng(9).normal(1.0, 2.0, (16, STEPS, 4)).astype(np.float32))
    x = L.Rescaling(0.5, offset=-0.1, name="rescale")(norm(signal))
    a = L.SeparableConv1D(6, 3, depth_multiplier=2, padding="causal", dilation_rate=2, name="sep_causal")(x)  # 37 x 6
    b = L.SeparableConv1D(6, 4, strides=2, padding="same", name="sep_same_s2")(x)                           # 19 x 6
    c = L.DepthwiseConv1D(3, depth_multiplier=2, strides=2, padding="same", name="dw_same")(x)              # 19 x 8
    g = L.Conv1D(6, 3, groups=2, padding="same", name="conv_groups")(c)                                     # 19 x 6
    y = L.Add(name="add")([b, g])
    y = L.GaussianNoise(0.1, name="gauss_noise")(y)
    y = L.GaussianDropout(0.2, name="gauss_dropout")(y)
    t = L.Conv1DTranspose(5, 3, strides=2, padding="same", output_padding=1, name="deconv1d_same")(y)       # 38 x 5
    t2 = L.Conv1DTranspose(4, 3, strides=2, dilation_rate=1, name="deconv1d_valid")(y)                     # 39 x 4
    u = L.UnitNormalization(name="unit")(t)
    n = L.LayerNormalization(center=False, scale=False, name="ln_bare")(t2)
    d = L.Flatten(name="flat_dot")(L.Dot(axes=(1, 1), name="dot_steps")([y, b]))                           # 6 x 6
    a = L.AlphaDropout(0.1, name="alpha_dropout")(L.Activation("selu", name="selu")(a))
    a = L.ActivityRegularization(l1=1e-3, l2=1e-2, name="activity_reg")(a)
    pooled = [L.GlobalAveragePooling1D(name=f"gap_{i}")(v) for i, v in enumerate([a, u, n])]
    v1 = L.Dense(8, activation="selu", activity_regularizer=tf_keras.regularizers.L1L2(1e-3, 1e-3),
                 name="dense_act_reg")(L.Concatenate(name="pooled")(pooled + [d]))
    v2 = L.Dense(8, name="dense_b")(d)
    cosine = L.Dot(axes=1, normalize=True, name="cosine")([v1, v2])                                        # 1

    image = L.Input((ROWS, COLS, 4), name="image")
    i = L.Conv2D(6, 3, strides=2, padding="same", groups=2, name="conv2d_groups")(image)                  # 11 x 13 x 6
    i = L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1, name="deconv2d_op")(i)       # 22 x 26 x 3
    i = L.Conv2DTranspose(2, (2, 3), strides=(2, 1), name="deconv2d_valid")(i)  # tf2onnx mis-pads stride > kernel
    features = L.Concatenate(name="features")([v1, v2, cosine, L.GlobalMaxPooling2D(name="gmp_image")(i)])
    out = L.Dense(1, activation="sigmoid", name="score")(features)
    return _compile(randomize(tf_keras.Model([signal, image], out, name="more_layers_zoo"), 10))


def recurrent_zoo():
    """Sequential over (steps, features): TimeDistributed(Dense), Bidirectional(LSTM), GRU without
    reset_after, SimpleRNN; recurrent kernels and biases random (tests/test_bridge_recurrent.py has the rest)."""
    model = tf_keras.Sequential(name="recurrent_zoo")
    model.add(L.TimeDistributed(L.Dense(5, activation="relu"), input_shape=(13, 6), name="td_dense"))
    model.add(L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi_lstm"))
    model.add(L.GRU(3, return_sequences=True, reset_after=False, name="gru"))
    model.add(L.SimpleRNN(3, name="simple_rnn"))
    model.add(L.Dense(1, activation="sigmoid", name="score"))
    return _compile(randomize(model, 8))


def with_lambda():
    inp = L.Input((ROWS, COLS, 1))
    x = L.Lambda(lambda t: t * 2.0, name="doubler")(inp)
    x = L.Flatten()(x)
    return tf_keras.Model(inp, L.Dense(1, name="out")(x), name="with_lambda")


def keras3_zoo(path):
    """A model written by Keras 3 (`keras` package), which tf_keras cannot always read."""
    import keras

    inp = keras.Input((ROWS, COLS, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="k3_conv")(inp)
    x = keras.layers.BatchNormalization(name="k3_bn")(x)
    x = keras.layers.ReLU(name="k3_relu")(x)
    inner = keras.Sequential([keras.Input((11, 13, 6)), keras.layers.Conv2D(6, 1, name="k3_inner")], name="k3_block")
    x = keras.layers.Add(name="k3_add")([x, inner(x)])
    x = keras.layers.Flatten(name="k3_flat")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="k3_out")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(3)
    for w in model.weights:
        if "variance" in w.path or "gamma" in w.path:
            w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype(np.float32))
        else:
            w.assign(rng.normal(0.0, 0.3, tuple(w.shape)).astype(np.float32))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.save(path)
    return path


BUILDERS = {"conv_zoo": conv_zoo, "activation_zoo": activation_zoo, "nested_multi": nested_multi,
            "activation_strings_zoo": activation_strings_zoo, "advanced_zoo": advanced_zoo,
            "conv1d_zoo": conv1d_zoo, "more_layers_zoo": more_layers_zoo,
            "recurrent_zoo": recurrent_zoo}


def save_all(folder) -> dict[str, str]:
    """Build and save every zoo model into `folder`; name → path."""
    paths = {}
    for name, build in BUILDERS.items():
        path = os.path.join(folder, f"{name}.h5")
        build().save(path)
        paths[name] = path
    paths["keras3_zoo"] = keras3_zoo(os.path.join(folder, "keras3_zoo.h5"))
    return paths
