"""training.loop.train: the original /train, step by step, checked against tf_keras on the real samples."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

import h5py
import numpy as np
import pytest
from PIL import Image

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from training.errors import TrainingError
from training.loop import TrainResult, train
from training.data import load_labeled
from scoring.images import load_image

from repo_data import SAMPLE_DIR as ORCASOUND  # sample_data/orcasound, in the repository
ROWS, COLS = 67, 83
RESPONSE_KEYS = {"acc", "val_acc", "loss", "val_loss", "cm", "labeled_files", "model_acc", "model_loss"}


@pytest.fixture(scope="module")
def model_h5(srkw_h5) -> str:
    return srkw_h5  # the session's fresh 67x83 srkw_cnn (read only: train() writes its own out_h5)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """The real samples laid out as the service downloads them, with an mp3/ folder and stray files."""
    root = tmp_path_factory.mktemp("labeled")
    for split in ("train", "validation"):
        shutil.copytree(ORCASOUND / split, root / split)
    (root / "mp3" / "calls").mkdir(parents=True)
    (root / "mp3" / "calls" / "a.mp3").write_bytes(b"ID3")
    (root / "train" / "calls" / "notes.txt").write_text("not an image")
    return root


def synthetic_labeled(root: Path, counts: dict[str, dict[str, int]], size=(40, 50)) -> Path:
    """root/<split>/<class>/i.png with random RGBA pixels; counts = {split: {class: n}}."""
    rng = np.random.default_rng(0)
    for split, classes in counts.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[0], size[1], 4), dtype=np.uint8)
                Image.fromarray(pixels, "RGBA").save(folder / f"{i}.png")
    return root


def weights(h5_path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(h5_path, "r") as f:
        f["model_weights"].visititems(lambda name, obj: found.__setitem__(name, obj[()])
                                      if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.fixture(scope="module")
def seeded_runs(model_h5, labeled, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    runs = [train(model_h5, labeled, ROWS, COLS, 2, out / f"srkw_cnn_{i}.h5", seed=seed, device="cpu")
            for i, seed in enumerate((3, 3, 4), start=1)]
    return runs, [out / f"srkw_cnn_{i}.h5" for i in (1, 2, 3)]


@pytest.mark.slow
def test_two_epochs_on_real_samples_report_like_the_original(seeded_runs, labeled):
    (result, _, _), (out_h5, _, _) = seeded_runs
    assert isinstance(result, TrainResult)
    for name in ("acc", "val_acc", "loss", "val_loss"):
        values = getattr(result, name)
        assert len(values) == 2 and all(type(v) is float and np.isfinite(v) for v in values)
    assert result.labeled_files == 10  # notes.txt and mp3/ do not count
    assert len(result.cm) == 4 and all(type(v) is int for v in result.cm)
    assert sum(result.cm) == 4  # validation images
    assert result.device == "cpu" and result.best_epoch in (1, 2)
    # the saved model is the epoch with the lowest val_loss, and cm/model_* describe that model
    assert result.best_epoch == int(np.argmin(result.val_loss)) + 1
    assert result.model_loss == pytest.approx(min(result.val_loss), rel=1e-6)
    assert result.model_acc == result.val_acc[result.best_epoch - 1]
    assert result.model_acc == (result.cm[0] + result.cm[3]) / 4
    response = result.to_response()
    assert set(response) == RESPONSE_KEYS
    assert json.loads(json.dumps(response)) == response
    assert response["cm"] == result.cm and out_h5.is_file()


@pytest.mark.slow
def test_saved_model_loads_in_tf_keras_and_its_validation_accuracy_is_model_acc(seeded_runs, labeled):
    from tf_keras.models import load_model
    from tf_keras.preprocessing.image import ImageDataGenerator

    (result, _, _), (out_h5, _, _) = seeded_runs
    flow = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(labeled / "validation"), target_size=(ROWS, COLS), batch_size=32, shuffle=False, class_mode="binary")
    assert flow.class_indices == {"calls": 0, "nocalls": 1}
    x, y = next(flow)
    keras_model = load_model(str(out_h5))  # compiled from the file's own training_config
    loss, acc = keras_model.evaluate(x, y, verbose=0)
    assert acc == pytest.approx(result.model_acc, abs=1e-6)
    assert loss == pytest.approx(result.model_loss, rel=1e-4)  # BCE + L2 penalty, as Keras reports it
    predicted = (keras_model.predict(x, verbose=0)[:, 0] > 0.5).astype(int)
    tn = int(((y == 0) & (predicted == 0)).sum()); fp = int(((y == 0) & (predicted == 1)).sum())
    fn = int(((y == 1) & (predicted == 0)).sum()); tp = int(((y == 1) & (predicted == 1)).sum())
    assert [tn, fp, fn, tp] == result.cm


@pytest.mark.slow
def test_reported_evaluation_is_exactly_the_written_models_own(seeded_runs, labeled):
    """model_loss, model_acc and cm come from the best epoch's validation pass (not a second one):
    evaluating the written file again gives the same numbers, bit for bit, whichever epoch won."""
    from training.data import decode_split
    from training.loop import evaluate, load_model, make_loss

    _, _, validation = load_labeled(labeled)
    decode_split(validation, ROWS, COLS)  # the same images for every run's model
    for result, out_h5 in zip(seeded_runs[0], seeded_runs[1]):
        model = load_model(out_h5, torch.device("cpu"))
        again = evaluate(model, make_loss(model.training_config, logging.getLogger("test")), validation,
                         torch.device("cpu"), 32)
        assert (again.loss, again.acc, again.cm) == (result.model_loss, result.model_acc, result.cm)
        assert result.model_loss == result.val_loss[result.best_epoch - 1]


def test_training_changes_weights_and_keeps_the_file_format(seeded_runs, model_h5):
    _, (out_h5, _, _) = seeded_runs
    before, after = weights(model_h5), weights(out_h5)
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    with h5py.File(model_h5, "r") as a, h5py.File(out_h5, "r") as b:
        assert a.attrs["model_config"] == b.attrs["model_config"]
        assert a.attrs["training_config"] == b.attrs["training_config"]


@pytest.mark.slow
def test_same_seed_gives_identical_cpu_runs(seeded_runs):
    (first, second, other), (h5_first, h5_second, _) = seeded_runs
    assert first == second
    a, b = weights(h5_first), weights(h5_second)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert other.loss != first.loss  # and the seed matters


@pytest.mark.slow
def test_one_log_line_per_epoch(model_h5, labeled, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="training"):
        train(model_h5, labeled, ROWS, COLS, 2, tmp_path / "out.h5", seed=0, device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2 loss=") and "val_acc=" in lines[1]
    assert re.search(r"val_acc=[0-9.]+ [0-9.]+s", lines[1])


def test_only_one_class_raises_training_error(model_h5, tmp_path):
    root = synthetic_labeled(tmp_path, {"train": {"calls": 3}, "validation": {"calls": 2, "nocalls": 2}})
    with pytest.raises(TrainingError, match="only one class"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5")
    root2 = synthetic_labeled(tmp_path / "b", {"train": {"calls": 3}, "validation": {"calls": 2}})
    with pytest.raises(TrainingError, match="exactly 2 classes"):
        train(model_h5, root2, ROWS, COLS, 1, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_empty_training_or_validation_set_raises_training_error(model_h5, tmp_path):
    root = synthetic_labeled(tmp_path / "a", {"validation": {"calls": 2, "nocalls": 2}})
    (root / "train" / "calls").mkdir(parents=True)
    with pytest.raises(TrainingError, match="training set is empty"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5")
    root = synthetic_labeled(tmp_path / "b", {"train": {"calls": 2, "nocalls": 2}})
    (root / "validation" / "calls").mkdir(parents=True)
    with pytest.raises(TrainingError, match="validation set is empty"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5")
    root = synthetic_labeled(tmp_path / "c", {"train": {"calls": 2, "nocalls": 2}})
    with pytest.raises(TrainingError, match="validation/"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5")


def test_three_classes_raise_training_error(model_h5, tmp_path):
    root = synthetic_labeled(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "validation": {"a": 1, "b": 1}})
    with pytest.raises(TrainingError, match="exactly 2 classes"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5")


def test_image_size_that_does_not_match_the_model_raises_naming_both(model_h5, tmp_path):
    root = synthetic_labeled(tmp_path, {"train": {"calls": 1, "nocalls": 1}, "validation": {"calls": 1, "nocalls": 1}})
    with pytest.raises(TrainingError, match=r"83x67.*67x83"):
        train(model_h5, root, COLS, ROWS, 1, tmp_path / "out.h5")


def test_corrupt_training_image_is_skipped_and_reported(model_h5, tmp_path):
    root = synthetic_labeled(tmp_path, {"train": {"calls": 2, "nocalls": 2}, "validation": {"calls": 1, "nocalls": 1}})
    (root / "train" / "nocalls" / "broken.png").write_bytes(b"\x89PNG broken")
    epochs = []
    result = train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5", seed=0, device="cpu",
                   on_epoch=lambda e, n, m: epochs.append((e, n, sorted(m))))
    assert result.labeled_files == 4 and (tmp_path / "out.h5").exists()
    assert [s["path"].endswith("broken.png") and s["split"] == "train" for s in result.skipped_files] == [True]
    assert result.counts == {"train": {"calls": 2, "nocalls": 2}, "validation": {"calls": 1, "nocalls": 1}}
    assert epochs == [(1, 1, ["acc", "best", "loss", "seconds", "val_acc", "val_loss"])]
    assert set(result.to_response()) == RESPONSE_KEYS
    with pytest.raises(TrainingError, match="broken.png"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out2.h5", skip_corrupt=False)


def test_class_left_without_readable_images_raises_training_error(model_h5, tmp_path):
    root = synthetic_labeled(tmp_path, {"train": {"calls": 2}, "validation": {"calls": 1, "nocalls": 1}})
    (root / "train" / "nocalls").mkdir()
    (root / "train" / "nocalls" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(TrainingError, match="only one class"):
        train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_roc_auc_and_average_precision_match_their_definitions():
    from training.loop import average_precision, roc_auc

    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(labels, scores) == pytest.approx(0.75)
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert roc_auc([0, 1, 1], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.1, 0.2]) is None and average_precision([0, 0], [0.1, 0.2]) is None


def test_synthetic_run_with_uneven_batches_and_one_class_validation(model_h5, tmp_path, caplog):
    """5 + 4 training images in batches of 4 (a short last batch); validation has only one class."""
    root = synthetic_labeled(tmp_path, {"train": {"calls": 5, "nocalls": 4}, "validation": {"nocalls": 3}})
    with caplog.at_level(logging.WARNING, logger="training"):
        result = train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5", seed=0, batch_size=4, device="cpu")
    assert "only one class" in caplog.text
    assert result.labeled_files == 9 and sum(result.cm) == 3 and result.cm[0] == result.cm[1] == 0
    classes, train_split, val_split = load_labeled(root)
    assert classes == ["calls", "nocalls"] and val_split.labels.tolist() == [1, 1, 1]
    assert train_split.labels.tolist() == [0] * 5 + [1] * 4


def test_epoch_loss_is_bce_plus_l2_before_the_update_with_dropout_active(model_h5, tmp_path):
    """One batch per epoch, augmentation off: loss[0] is the train-mode batch loss of the initial
    weights, replayed here with the same seed (Dropout masks come from torch's global generator)."""
    from conversion import keras_to_torch
    from training.optim import BinaryCrossentropy

    root = synthetic_labeled(tmp_path, {"train": {"calls": 2, "nocalls": 2}, "validation": {"calls": 1, "nocalls": 1}})
    result = train(model_h5, root, ROWS, COLS, 1, tmp_path / "out.h5", seed=5, device="cpu", augment=False)
    model = keras_to_torch(model_h5)
    files = sorted((root / "train").glob("*/*.png"))
    order = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    x = torch.from_numpy(np.stack([load_image(files[i], ROWS, COLS) for i in order]))
    y = torch.tensor([0, 0, 1, 1])[order]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(5)
        model.train()
        logits = model.forward_logits(x)
        expected = float(BinaryCrossentropy()(logits, y) + model.regularization_loss())
    assert result.loss[0] == pytest.approx(expected, rel=1e-6)
    assert result.acc[0] == float(((torch.sigmoid(logits[:, 0]) > 0.5).long() == y).float().mean())
