"""Scores of a model on a labeled folder: accuracy at 0.5, ROC AUC and average precision.

`evaluate_folder(model, folder, rows, cols)` reads `folder/<class>/*` images and audio clips (exactly two class
folders; class index = position in sorted order, as for training) and scores them with
`scoring.torch_scoring.predict`. Used by `orca evaluate`.
"""

from __future__ import annotations

import os

from .errors import TrainingError


def evaluate_folder(model_path: str, folder: str, rows: int, cols: int, device=None) -> dict:
    """Accuracy at 0.5, ROC AUC and average precision of a model on `folder/<class>/*` images.

    Raises TrainingError when `folder` does not hold exactly two class folders."""
    from scoring.clips import list_clips
    from scoring.torch_scoring import predict

    from .loop import average_precision, roc_auc

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if len(classes) != 2:
        raise TrainingError(f"{folder} must hold exactly two class folders, found {classes}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = [str(p) for p in list_clips(os.path.join(folder, name))]
        paths += found
        labels += [label] * len(found)
    scores = predict(model_path, paths, rows, cols, device=device)
    correct = sum(int((s > 0.5) == bool(y)) for s, y in zip(scores, labels))
    return {"model": model_path, "data": folder, "classes": classes, "images": len(paths),
            "accuracy": correct / len(paths), "roc_auc": roc_auc(labels, scores),
            "average_precision": average_precision(labels, scores)}
