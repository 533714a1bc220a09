"""The optimizer and loss a Keras model file was compiled with, as torch objects.

`model.training_config` (conversion.TrainingConfig) holds what `model.compile` stored: an optimizer
class name ("Adam"; tf_keras 2.11+ writes "Custom>Adam", the bridge strips the prefix), its Keras
config (learning_rate, beta_1, ...) and the loss. Keras defaults are filled in where the file
leaves a value out (Keras' epsilon default is 1e-7, torch's 1e-8).

Known differences from Keras' update rules (all negligible at Keras' epsilon of 1e-7):
- Adam/Adamax/Nadam: Keras adds epsilon to sqrt(v) *before* bias correction ("epsilon hat"),
  torch after it; Keras' step equals torch's with epsilon / sqrt(1 - beta_2**t), i.e. a larger
  epsilon during the first steps. Nadam's momentum schedule follows the same paper in both but
  the implementations are not bit-identical.
- Keras 2.11+ `weight_decay` is decoupled (var -= lr * wd * var): mapped to AdamW for Adam, to
  torch's coupled `weight_decay` with a warning for the others.
- clipnorm / clipvalue / global_clipnorm / use_ema are not applied (a warning says so).
"""

from __future__ import annotations

import logging
from types import MappingProxyType

import torch

from .errors import TrainingError

LOG = logging.getLogger("training.optim")

KERAS_EPSILON = 1e-7
DEFAULT_OPTIMIZER = "Adam"
DEFAULT_LEARNING_RATE = 1e-3

# Keras class name → (torch class, Keras defaults that matter)
_KERAS_DEFAULTS = MappingProxyType({
    "adam": {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": KERAS_EPSILON, "amsgrad": False},
    "adamw": {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": KERAS_EPSILON,
              "amsgrad": False, "weight_decay": 0.004},
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "rmsprop": {"learning_rate": 1e-3, "rho": 0.9, "momentum": 0.0, "epsilon": KERAS_EPSILON, "centered": False},
    "adagrad": {"learning_rate": 1e-3, "initial_accumulator_value": 0.1, "epsilon": KERAS_EPSILON},
    "adadelta": {"learning_rate": 1e-3, "rho": 0.95, "epsilon": KERAS_EPSILON},
    "adamax": {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": KERAS_EPSILON},
    "nadam": {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": KERAS_EPSILON},
})
_UNAPPLIED = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema")


def _learning_rate(value, log) -> float:
    """A float, or a serialized schedule (its initial rate is used, with a warning)."""
    if isinstance(value, dict):
        config = value.get("config") or {}
        for key in ("initial_learning_rate", "learning_rate", "value"):
            if isinstance(config.get(key), (int, float)):
                log.warning("learning-rate schedule %s is not reproduced; training with its initial "
                            "rate %g", value.get("class_name"), config[key])
                return float(config[key])
        raise TrainingError(f"unsupported learning_rate setting {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"unsupported learning_rate setting {value!r}") from None


def keras_optimizer_settings(training_config, log: logging.Logger = LOG) -> tuple[str, dict]:
    """(lower-case Keras optimizer name, its config with Keras defaults filled in)."""
    name = getattr(training_config, "optimizer", None) if training_config is not None else None
    if not name:
        log.warning("model file has no training_config (not compiled): training with Adam, "
                    "learning rate %g", DEFAULT_LEARNING_RATE)
        return "adam", dict(_KERAS_DEFAULTS["adam"])
    key = str(name).split(">")[-1].lower()
    if key not in _KERAS_DEFAULTS:
        raise TrainingError(f"optimizer {name!r} of the model file is not supported; supported: "
                            + ", ".join(sorted(_KERAS_DEFAULTS)))
    params = dict(getattr(training_config, "optimizer_params", None) or {})
    if "lr" in params and "learning_rate" not in params:  # Keras < 2.3 spelling
        params["learning_rate"] = params.pop("lr")
    settings = dict(_KERAS_DEFAULTS[key])
    settings.update({k: v for k, v in params.items() if v is not None})
    settings["learning_rate"] = _learning_rate(settings["learning_rate"], log)
    for option in _UNAPPLIED:
        if params.get(option) not in (None, False, 0):
            log.warning("optimizer option %s=%r is not applied by the PyTorch trainer", option, params[option])
    return key, settings


def make_optimizer(training_config, params, log: logging.Logger = LOG) -> torch.optim.Optimizer:
    """The torch optimizer equivalent to the model file's Keras optimizer, over `params`.

    No training_config (a model saved without compile) → Adam 1e-3, with a warning. An optimizer
    this function does not know raises TrainingError.
    """
    key, s = keras_optimizer_settings(training_config, log)
    lr, eps = s["learning_rate"], float(s.get("epsilon") or KERAS_EPSILON)
    weight_decay = float(s.get("weight_decay") or 0.0)
    if weight_decay and key not in ("adam", "adamw"):
        log.warning("Keras' decoupled weight_decay=%g applied as torch's (coupled) weight_decay for %s",
                    weight_decay, key)
    if key in ("adam", "adamw"):
        betas = (float(s["beta_1"]), float(s["beta_2"]))
        if weight_decay:
            return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                     amsgrad=bool(s["amsgrad"]))
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, amsgrad=bool(s["amsgrad"]))
    if key == "sgd":
        momentum = float(s["momentum"])
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=bool(s["nesterov"]) and momentum > 0,
                               weight_decay=weight_decay)
    if key == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=float(s["rho"]), eps=eps, momentum=float(s["momentum"]),
                                   centered=bool(s["centered"]), weight_decay=weight_decay)
    if key == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay,
                                   initial_accumulator_value=float(s["initial_accumulator_value"]))
    if key == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=float(s["rho"]), eps=eps, weight_decay=weight_decay)
    if key == "adamax":
        return torch.optim.Adamax(params, lr=lr, betas=(float(s["beta_1"]), float(s["beta_2"])), eps=eps,
                                  weight_decay=weight_decay)
    if key == "nadam":
        return torch.optim.NAdam(params, lr=lr, betas=(float(s["beta_1"]), float(s["beta_2"])), eps=eps,
                                 weight_decay=weight_decay)
    raise AssertionError(key)  # unreachable: keras_optimizer_settings only returns known keys


def make_scheduler(training_config, optimizer: torch.optim.Optimizer):
    """Keras 2's legacy `decay` (lr / (1 + decay * iterations), stepped per batch) or None."""
    params = getattr(training_config, "optimizer_params", None) or {}
    decay = params.get("decay")
    if not decay:
        return None
    decay = float(decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))


# --------------------------------------------------------------------------- loss

_BCE_NAMES = frozenset({"binary_crossentropy", "binarycrossentropy", "bce"})


def _single_loss(loss):
    """Keras allows one loss per output, as a list or a dict; a one-output model has one."""
    if isinstance(loss, (list, tuple)):
        if len(loss) != 1:
            raise TrainingError(f"model file has {len(loss)} losses (one per output): multi-output models are not supported")
        return _single_loss(loss[0])
    if isinstance(loss, dict) and "class_name" not in loss:
        if len(loss) != 1:
            raise TrainingError(f"model file has losses for outputs {sorted(loss)}: multi-output models are not supported")
        return _single_loss(next(iter(loss.values())))
    return loss


class BinaryCrossentropy(torch.nn.Module):
    """Keras binary_crossentropy computed on logits (`model.forward_logits`).

    For a sigmoid output Keras computes the loss from the logits as well (tf_keras reads the
    sigmoid's input), so this matches it; on probabilities Keras would clip to [1e-7, 1 - 1e-7].
    `label_smoothing` as Keras: y * (1 - ls) + 0.5 * ls. Returns the mean over the batch.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        targets = targets.to(logits.dtype).reshape(logits.shape)
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)


def make_loss(training_config, log: logging.Logger = LOG) -> BinaryCrossentropy:
    """The model file's loss as a torch module taking (logits, targets); only binary cross-entropy.

    No training_config → binary cross-entropy, with a warning. Any other loss raises TrainingError.
    """
    loss = _single_loss(getattr(training_config, "loss", None) if training_config is not None else None)
    if loss is None:
        log.warning("model file has no loss in its training_config: training with binary_crossentropy")
        return BinaryCrossentropy()
    config = {}
    if isinstance(loss, dict):
        config = loss.get("config") or {}
        name = loss.get("class_name") or config.get("name") or ""
    else:
        name = str(loss)
    if name.split(">")[-1].lower() not in _BCE_NAMES:
        raise TrainingError(f"loss {name!r} of the model file is not supported; only binary_crossentropy is")
    if config.get("reduction") not in (None, "auto", "sum_over_batch_size"):
        log.warning("loss reduction %r is not reproduced: using the batch mean", config["reduction"])
    return BinaryCrossentropy(config.get("label_smoothing") or 0.0)
