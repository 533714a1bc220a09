"""TensorBoard event files of a training, read back with TensorFlow's own event reader."""

from __future__ import annotations

import torch  # noqa: F401  (before TensorFlow)

import numpy as np

from training.tensorboard import EXAMPLE_IMAGES, TrainingLog


def read_events(folder):
    import tensorflow as tf

    scalars, images = {}, {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append(value.image)
                else:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, images


def test_epochs_and_augmented_examples_reach_the_event_file(tmp_path):
    with TrainingLog(tmp_path / "tb") as log:
        log.epoch(1, {"loss": 0.7, "acc": 0.5, "val_loss": 0.69, "val_acc": 0.55, "roc_auc": 0.6,
                      "average_precision": None, "learning_rate": 1e-4})
        log.epoch(2, {"loss": 0.6, "acc": 0.6, "val_loss": 0.65, "val_acc": 0.6, "roc_auc": float("nan")})
        log.augmented_examples(torch.rand(12, 9, 11, 3), epoch=1)
        log.augmented_examples(torch.rand(12, 9, 11, 3), epoch=2)  # once per training
    scalars, images = read_events(tmp_path / "tb")
    assert scalars["loss/train"] == [(1, np.float32(0.7)), (2, np.float32(0.6))]
    assert [step for step, _ in scalars["accuracy/validation"]] == [1, 2]
    assert scalars["roc_auc/validation"] == [(1, np.float32(0.6))]  # NaN (one class) is left out
    assert "average_precision/validation" not in scalars
    assert scalars["learning_rate"][0][1] == np.float32(1e-4)
    logged = images["augmented_training_images"]
    assert len(logged) == 1  # one grid of EXAMPLE_IMAGES images side by side
    assert (logged[0].height, logged[0].width) == (9, 11 * EXAMPLE_IMAGES)
