"""training.optim maps a Keras file's training_config to torch's optimizer and loss."""

from __future__ import annotations

import logging
import math

import torch

import pytest

from conversion import TrainingConfig
from training.errors import TrainingError
from training.optim import BinaryCrossentropy, make_loss, make_optimizer, make_scheduler


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def config(optimizer, loss="binary_crossentropy", **params):
    return TrainingConfig(optimizer=optimizer, optimizer_params=params, loss=loss, metrics=["accuracy"])


def test_srkw_cnn_adam_keeps_keras_learning_rate_betas_and_epsilon():
    opt = make_optimizer(config("Adam", learning_rate=3e-5, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                                amsgrad=False, decay=0.0, name="Adam"), params())
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(3e-5) and group["betas"] == (0.9, 0.999)
    assert group["eps"] == 1e-7 and group["amsgrad"] is False


def test_keras_defaults_fill_what_the_file_leaves_out():
    group = make_optimizer(config("Adam"), params()).param_groups[0]
    assert group["lr"] == 1e-3 and group["eps"] == 1e-7  # Keras' epsilon, not torch's 1e-8
    group = make_optimizer(config("SGD"), params()).param_groups[0]
    assert group["lr"] == 0.01 and group["momentum"] == 0


def test_lr_alias_and_custom_prefix():
    group = make_optimizer(config("Custom>Adam", lr=0.02), params()).param_groups[0]
    assert group["lr"] == pytest.approx(0.02)


@pytest.mark.parametrize("name,settings,cls,expected", [
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, torch.optim.SGD,
     {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {"learning_rate": 0.01, "rho": 0.8, "momentum": 0.1, "epsilon": 1e-6, "centered": True},
     torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.8, "momentum": 0.1, "eps": 1e-6, "centered": True}),
    ("Adagrad", {"learning_rate": 0.05, "initial_accumulator_value": 0.2}, torch.optim.Adagrad,
     {"lr": 0.05, "initial_accumulator_value": 0.2, "eps": 1e-7}),
    ("Adadelta", {"learning_rate": 1.0, "rho": 0.9}, torch.optim.Adadelta, {"lr": 1.0, "rho": 0.9, "eps": 1e-7}),
    ("Adamax", {"learning_rate": 0.002, "beta_1": 0.8}, torch.optim.Adamax, {"lr": 0.002, "betas": (0.8, 0.999)}),
    ("Nadam", {"learning_rate": 0.002}, torch.optim.NAdam, {"lr": 0.002, "betas": (0.9, 0.999), "eps": 1e-7}),
    ("AdamW", {"learning_rate": 0.001, "weight_decay": 0.01}, torch.optim.AdamW,
     {"lr": 0.001, "weight_decay": 0.01}),
])
def test_each_keras_optimizer_maps_to_its_torch_counterpart(name, settings, cls, expected):
    opt = make_optimizer(config(name, **settings), params())
    assert type(opt) is cls
    for key, value in expected.items():
        assert opt.param_groups[0][key] == pytest.approx(value), key


def test_missing_training_config_trains_with_adam_1e3_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        opt = make_optimizer(None, params())
        loss = make_loss(None)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 1e-3
    assert isinstance(loss, BinaryCrossentropy)
    assert "no training_config" in caplog.text
    assert type(make_optimizer(TrainingConfig(), params())) is torch.optim.Adam


def test_learning_rate_schedule_uses_its_initial_rate_with_a_warning(caplog):
    schedule = {"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.01, "decay_steps": 10}}
    with caplog.at_level(logging.WARNING):
        opt = make_optimizer(config("Adam", learning_rate=schedule), params())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert "ExponentialDecay" in caplog.text


def test_legacy_decay_becomes_an_inverse_time_scheduler():
    cfg = config("SGD", learning_rate=0.1, decay=0.5)
    opt = make_optimizer(cfg, params())
    scheduler = make_scheduler(cfg, opt)
    for _ in range(2):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / (1 + 0.5 * 2))
    assert make_scheduler(config("Adam", decay=0.0), opt) is None


def test_unsupported_optimizer_raises_training_error():
    with pytest.raises(TrainingError, match="Ftrl"):
        make_optimizer(config("Ftrl"), params())


@pytest.mark.parametrize("loss", ["binary_crossentropy", "BinaryCrossentropy", ["binary_crossentropy"],
                                  {"dense_1": "binary_crossentropy"},
                                  {"class_name": "BinaryCrossentropy", "config": {"from_logits": False}}])
def test_binary_crossentropy_spellings_are_accepted(loss):
    assert isinstance(make_loss(config("Adam", loss=loss)), BinaryCrossentropy)


@pytest.mark.parametrize("loss", ["mse", "categorical_crossentropy", {"class_name": "Hinge", "config": {}},
                                  ["binary_crossentropy", "mse"]])
def test_unsupported_loss_raises_training_error(loss):
    with pytest.raises(TrainingError, match="not supported"):
        make_loss(config("Adam", loss=loss))


def test_bce_on_logits_equals_keras_bce_on_probabilities():
    logits = torch.tensor([[-3.0], [0.2], [4.0], [-0.5]])
    targets = torch.tensor([0, 1, 1, 0])
    p = torch.sigmoid(logits.double())[:, 0].clamp(1e-7, 1 - 1e-7)  # Keras clips probabilities
    y = targets.double()
    keras = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert float(BinaryCrossentropy()(logits, targets)) == pytest.approx(float(keras), rel=1e-6)
    smoothed = make_loss(config("Adam", loss={"class_name": "BinaryCrossentropy",
                                              "config": {"label_smoothing": 0.2}}))
    y_s = y * 0.8 + 0.1
    keras_s = -(y_s * torch.log(p) + (1 - y_s) * torch.log(1 - p)).mean()
    assert float(smoothed(logits, targets)) == pytest.approx(float(keras_s), rel=1e-6)
    assert math.isclose(float(BinaryCrossentropy()(logits, targets, reduction="sum")), 4 * float(keras), rel_tol=1e-6)
