"""`train`: fine-tune a Keras .h5 model on a labeled folder, as the original `/train` did.

One function per step, like torchvision's reference classification script:
load_model → load_labeled/decode_split → make_optimizer/make_loss → train_one_epoch/evaluate per
epoch (keeping the state with the lowest val_loss, as ModelCheckpoint(save_best_only=True)) →
reload the best state → evaluate it (cm, model_acc, model_loss) → save it in the format it came in.

Keras' numbers, reproduced: the epoch `loss` is the batch loss (binary cross-entropy + the L1/L2
regularization penalty, computed before the batch's update) averaged over the epoch's samples
(Keras weights each batch by its size, so a short last batch counts less); `acc` is the fraction
of training samples with (p > 0.5) == label, over the augmented images with Dropout active;
`val_loss`/`val_acc` the same on the validation images in eval mode (regularization included,
as in Keras' evaluate).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from conversion.formats import load_trainable, save_trained

from .augment import random_shear_zoom
from .data import Split, check_decoded, decode_split, load_labeled
from scoring.device import pick_device
from scoring.images import RESCALE
from scoring.tensors import autocast, check_input_size, to_batch

from .errors import TrainingError
from .optim import make_loss, make_optimizer, make_scheduler
from .precision import training_precision

LOG = logging.getLogger("training")
THRESHOLD = 0.5

RESPONSE_KEYS = ("acc", "val_acc", "loss", "val_loss", "cm", "labeled_files", "model_acc", "model_loss")


@dataclass
class TrainResult:
    acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    cm: list[int] = field(default_factory=list)  # [tn, fp, fn, tp] of the saved model on validation
    labeled_files: int = 0
    model_acc: float = 0.0
    model_loss: float = 0.0
    best_epoch: int = 0  # 1-based epoch whose weights were saved
    device: str = "cpu"
    precision: str = "fp32"  # what the forward passes ran in: "fp32" or "bf16" (autocast); weights stay float32
    # provenance only (not in the /train JSON): ranking quality of the saved model on validation
    # (None when validation holds a single class), the data actually used, what was skipped
    roc_auc: float | None = None
    average_precision: float | None = None
    classes: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # {"train": {class: n}, "validation": {class: n}}, used images
    skipped_files: list[dict] = field(default_factory=list)  # [{"path", "split", "reason"}]: corrupt images
    hyperparameters: dict = field(default_factory=dict)  # epochs, batch_size, optimizer, learning_rate, seed, ...
    duration_s: float = field(default=0.0, compare=False)
    tensorboard_dir: str | None = None  # where this training's TensorBoard event files are

    def to_response(self) -> dict:
        """The original /train JSON, less `model_url` (the service adds it)."""
        data = asdict(self)
        return {key: data[key] for key in RESPONSE_KEYS}


@dataclass
class EvalResult:
    loss: float
    acc: float
    cm: list[int]
    scores: np.ndarray | None = None  # P(class 1) per image, in split order


# --------------------------------------------------------------------------- ranking metrics

def roc_auc(labels, scores) -> float | None:
    """Area under the ROC curve (ties count one half: the Mann-Whitney U statistic); None for one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def average_precision(labels, scores) -> float | None:
    """Average precision as scikit-learn defines it: sum over thresholds of (R_n - R_{n-1}) P_n."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        return None
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each distinct score
    tp = np.cumsum(labels)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --------------------------------------------------------------------------- steps

def load_model(model_h5, device: torch.device):
    """The model file (.h5 Keras, .onnx, .pt checkpoint) as a trainable module on `device`."""
    model = load_trainable(model_h5)
    return model.to(device)


def _rows(pixels, index: np.ndarray):
    """pixels[index] for numpy pixels or a tensor (indexed on its own device)."""
    if isinstance(pixels, torch.Tensor):
        return pixels.index_select(0, torch.as_tensor(index, device=pixels.device))
    return pixels[index]


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    logits = model.forward_logits(x)
    if isinstance(logits, tuple) or logits.dim() != 2 or logits.shape[1] != 1:
        shape = [tuple(t.shape) for t in logits] if isinstance(logits, tuple) else tuple(logits.shape)
        raise TrainingError(f"model output has shape {shape}; binary training needs one sigmoid unit (N, 1)")
    return logits


def train_one_epoch(model, loss_fn, optimizer, scheduler, split: Split, device: torch.device,
                    batch_size: int, generator: torch.Generator, augment: bool = True,
                    precision: str = "fp32", show_batch=None) -> tuple[float, float]:
    """One pass over the shuffled, augmented training images; returns (loss, acc) like Keras' fit.
    `precision` "bf16": the forward in bf16 autocast; augmentation, the loss and the update in float32.
    `show_batch(x)` (optional) gets the first batch as the model sees it (NHWC in [0, 1])."""
    model.train()
    order = torch.randperm(len(split), generator=generator).numpy()
    labels = torch.from_numpy(split.labels)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        x = to_batch(_rows(split.pixels, index), device)
        if augment:
            x = random_shear_zoom(x, generator)
        if show_batch is not None and start == 0:
            show_batch(x)
        y = labels[index].to(device)
        with autocast(device, precision):
            logits = _logits(model, x)
        logits = logits.float()
        loss = loss_fn(logits, y) + model.regularization_loss().to(device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * len(index)
            correct += ((torch.sigmoid(logits[:, 0]) > THRESHOLD).long() == y).sum()
    return float(loss_sum) / len(split), int(correct) / len(split)


@torch.no_grad()
def evaluate(model, loss_fn, split: Split, device: torch.device, batch_size: int,
             precision: str = "fp32") -> EvalResult:
    """Eval-mode loss (BCE mean + regularization), accuracy and [tn, fp, fn, tp] at p > 0.5."""
    model.eval()
    labels = torch.from_numpy(split.labels)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    cm = torch.zeros(4, dtype=torch.int64, device=device)
    scores = []
    for start in range(0, len(split), batch_size):
        x = to_batch(split.pixels[start:start + batch_size], device)
        y = labels[start:start + batch_size].to(device)
        with autocast(device, precision):
            logits = _logits(model, x)
        logits = logits.float()
        loss_sum += loss_fn(logits, y, reduction="sum").double()
        probability = torch.sigmoid(logits[:, 0])
        scores.append(probability.double().cpu())
        predicted = (probability > THRESHOLD).long()
        cm += torch.bincount(y * 2 + predicted, minlength=4)  # [tn, fp, fn, tp]
    loss = float(loss_sum) / len(split) + float(model.regularization_loss())
    cm_list = [int(v) for v in cm.cpu()]
    score_array = torch.cat(scores).numpy() if scores else np.zeros(0)
    return EvalResult(loss, (cm_list[0] + cm_list[3]) / len(split), cm_list, score_array)


def _make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _jsonable(value):
    """Plain JSON types only (optimizer configs may hold numpy scalars or nested objects)."""
    import json

    try:
        return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    except (TypeError, ValueError):
        return str(value)


def _open_board(folder, log):
    """The training's TensorBoard log as a context manager, or a null context (no folder given)."""
    if folder is None:
        return contextlib.nullcontext(None)
    from .tensorboard import TrainingLog

    board = TrainingLog(folder)
    log.info("TensorBoard event files: %s (tensorboard --logdir %s)", board.folder, board.folder)
    return board


def _learning_rate(optimizer) -> float | None:
    try:
        return float(optimizer.param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- train

def train(model_h5: str | os.PathLike, labeled_dir: str | os.PathLike, rows: int, cols: int, epochs: int,
          out_h5: str | os.PathLike, *, device: str | torch.device | None = None, seed: int | None = None,
          batch_size: int = 32, augment: bool = True, log: logging.Logger = LOG,
          on_epoch=None, skip_corrupt: bool = True, precision: str = "fp32", pixel_cache=None,
          identity=None, tensorboard_dir: str | os.PathLike | None = None) -> TrainResult:
    """Fine-tune `model_h5` on `labeled_dir` (train/<class>/, validation/<class>/) for `epochs`
    epochs and write the epoch with the lowest val_loss to `out_h5` (a copy of model_h5 with new
    weights). `rows`, `cols` are the original's img_width, img_height. `seed` makes a CPU run
    repeatable. Raises TrainingError for inputs that cannot be trained on.

    `on_epoch(epoch, epochs, metrics)` (optional) is called after each epoch with that epoch's
    {"loss", "acc", "val_loss", "val_acc", "seconds", "best"}; an exception it raises aborts training.
    A training or validation image that is not readable is skipped (listed in
    `result.skipped_files`) unless `skip_corrupt=False`; a class left without images is still an error.

    `precision`: "fp32", "bf16" or "auto" (`device.training_precision`: bf16 autocast where the device
    computes bf16 natively); the weights, the optimizer and the written model stay float32, and the
    validation passes run at the same precision as training. `pixel_cache` (a
    `scoring.pixel_cache.PixelCache`) with `identity(path)`: images decoded in an earlier training or
    /predict are taken from it (`data.decode_split`). `tensorboard_dir`: TensorBoard event files there
    (`training.tensorboard`: per-epoch metrics with validation ROC AUC and AP, learning rate, a few
    augmented training images).
    """
    run_started = time.perf_counter()
    if int(epochs) < 1:
        raise TrainingError(f"epochs must be at least 1, got {epochs}")
    if int(batch_size) < 1:
        raise TrainingError(f"batch_size must be at least 1, got {batch_size}")
    device = pick_device(device)
    precision = training_precision(precision, device)
    model = load_model(model_h5, device)
    check_input_size(model, rows, cols, error=TrainingError)
    classes, train_split, val_split = load_labeled(labeled_dir)
    if min(val_split.class_counts(2)) == 0:
        log.warning("the validation set holds only one class (%s): val_acc and cm cover that class only",
                    dict(zip(classes, val_split.class_counts(2))))
    config = model.training_config
    loss_fn = make_loss(config, log)
    optimizer = make_optimizer(config, model.parameters(), log)
    scheduler = make_scheduler(config, optimizer)
    started = time.perf_counter()
    decode_split(train_split, rows, cols, skip_corrupt=skip_corrupt, cache=pixel_cache, identity=identity)
    decode_split(val_split, rows, cols, skip_corrupt=skip_corrupt, cache=pixel_cache, identity=identity)
    skipped = [{"path": os.fspath(path), "split": split.name, "reason": reason}
               for split in (train_split, val_split) for path, reason in split.skipped]
    for item in skipped:
        log.warning("skipped a corrupt %s image: %s", item["split"], item["reason"])
    check_decoded(classes, train_split, val_split, labeled_dir)
    log.info("training %s on %s: %d training images %s, %d validation images, %dx%d, %d epochs, %s, %s, "
             "decoded in %.1f s", os.fspath(model_h5), os.fspath(labeled_dir), len(train_split),
             dict(zip(classes, train_split.class_counts(2))), len(val_split), rows, cols, epochs,
             device, precision, time.perf_counter() - started)

    devices = [device.index or 0] if device.type == "cuda" else []
    result = TrainResult(labeled_files=len(train_split), device=str(device), precision=precision,
                         classes=list(classes),
                         skipped_files=skipped,
                         counts={s.name: dict(zip(classes, s.class_counts(len(classes))))
                                 for s in (train_split, val_split)})
    result.hyperparameters = {
        "epochs": int(epochs), "batch_size": int(batch_size), "seed": seed, "augment": bool(augment),
        "img_width": int(rows), "img_height": int(cols), "precision": precision,
        "optimizer": getattr(config, "optimizer", None),
        "optimizer_params": _jsonable(getattr(config, "optimizer_params", None)),
        "learning_rate": _learning_rate(optimizer),
        "loss": _jsonable(getattr(config, "loss", None)),
    }
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)  # Dropout draws from torch's global generator
        generator = _make_generator(seed)  # shuffling and augmentation
        best_loss, best_state = math.inf, None
        with _open_board(tensorboard_dir, log) as board:
            for epoch in range(1, int(epochs) + 1):
                started = time.perf_counter()
                loss, acc = train_one_epoch(model, loss_fn, optimizer, scheduler, train_split, device,
                                            batch_size, generator, augment, precision,
                                            show_batch=(lambda x, e=epoch: board.augmented_examples(x, e))
                                            if board is not None and epoch == 1 else None)
                val = evaluate(model, loss_fn, val_split, device, batch_size, precision)
                if board is not None:
                    board.epoch(epoch, {"loss": loss, "acc": acc, "val_loss": val.loss, "val_acc": val.acc,
                                        "roc_auc": roc_auc(val_split.labels, val.scores),
                                        "average_precision": average_precision(val_split.labels, val.scores),
                                        "learning_rate": _learning_rate(optimizer)})
                for name, value in (("loss", loss), ("acc", acc), ("val_loss", val.loss), ("val_acc", val.acc)):
                    getattr(result, name).append(float(value))
                improved = val.loss < best_loss  # ModelCheckpoint(monitor="val_loss", save_best_only=True)
                if improved:
                    best_loss, result.best_epoch, best_val = val.loss, epoch, val
                    best_state = copy.deepcopy(model.state_dict())
                log.info("epoch %d/%d loss=%.4f acc=%.4f val_loss=%.4f val_acc=%.4f %.1fs%s", epoch, epochs,
                         loss, acc, val.loss, val.acc, time.perf_counter() - started, " (best)" if improved else "")
                if on_epoch is not None:
                    on_epoch(epoch, int(epochs), {"loss": float(loss), "acc": float(acc), "val_loss": float(val.loss),
                                                  "val_acc": float(val.acc), "best": bool(improved),
                                                  "seconds": time.perf_counter() - started})
        result.tensorboard_dir = board.folder if board is not None else None
    # The saved model's own evaluation is the one its epoch already made (the same weights on the same
    # images in eval mode), so validation is not run again: on two CPU cores that pass cost 1–1.5 s.
    if best_state is None:
        log.warning("val_loss was never finite: keeping the last epoch's weights")
        result.best_epoch, final = int(epochs), val
    else:
        model.load_state_dict(best_state)
        final = best_val
    result.cm, result.model_acc, result.model_loss = final.cm, float(final.acc), float(final.loss)
    result.roc_auc = roc_auc(val_split.labels, final.scores)
    result.average_precision = average_precision(val_split.labels, final.scores)
    save_trained(model, model_h5, out_h5)
    result.duration_s = time.perf_counter() - run_started
    log.info("saved epoch %d to %s: model_acc=%.4f model_loss=%.4f cm=%s", result.best_epoch,
             os.fspath(out_h5), result.model_acc, result.model_loss, result.cm)
    return result
