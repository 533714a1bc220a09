"""TensorBoard event files of one training, for ML experts who want more than /train's JSON.

Per epoch: loss and accuracy (train and validation), validation ROC AUC and average precision, the
learning rate; once: a few training images exactly as the model saw them after augmentation.
Written with tensorboardX, which needs only protobuf (the `tensorboard` package, with its server, is
what one installs to *view* them: `tensorboard --logdir <folder>`).
"""

from __future__ import annotations

import os

import numpy as np

EXAMPLE_IMAGES = 8  # augmented training images logged at the first epoch


class TrainingLog:
    """One training's event files in `folder` (created)."""

    def __init__(self, folder: str | os.PathLike, comment: str = ""):
        from tensorboardX import SummaryWriter

        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.writer = SummaryWriter(logdir=self.folder, comment=comment)
        self.images_logged = False

    def epoch(self, epoch: int, metrics: dict) -> None:
        """`metrics`: loss, acc, val_loss, val_acc, and (optional) roc_auc, average_precision, learning_rate."""
        pairs = (("loss/train", "loss"), ("loss/validation", "val_loss"), ("accuracy/train", "acc"),
                 ("accuracy/validation", "val_acc"), ("roc_auc/validation", "roc_auc"),
                 ("average_precision/validation", "average_precision"), ("learning_rate", "learning_rate"))
        for tag, key in pairs:
            value = metrics.get(key)
            if value is not None and np.isfinite(value):
                self.writer.add_scalar(tag, float(value), epoch)
        self.writer.flush()

    def augmented_examples(self, images, epoch: int = 1) -> None:
        """A few images of a training batch after augmentation: float NHWC in [0, 1] (torch or numpy)."""
        if self.images_logged:
            return
        array = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        array = np.clip(array[:EXAMPLE_IMAGES], 0.0, 1.0)
        if array.ndim == 4 and array.shape[-1] in (1, 3):
            self.writer.add_images("augmented_training_images", array, epoch, dataformats="NHWC")
            self.images_logged = True

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
