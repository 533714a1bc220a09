"""Query parameters of /train and /predict: every problem is collected and reported at once as a
400 naming the parameters. Parameters an endpoint does not use are accepted and ignored."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadRequest


@dataclass(frozen=True)
class Limits:
    max_image_size: int = 4096
    max_epochs: int = 1000


class _Reader:
    def __init__(self, args):
        self.args = args
        self.problems: list[str] = []

    def text(self, name: str) -> str | None:
        value = self.args.get(name)
        if value is None:
            self.problems.append(f"missing parameter: {name}")
            return None
        if not value.strip():
            self.problems.append(f"empty parameter: {name}")
            return None
        return value.strip()

    def integer(self, name: str, low: int, high: int, required: bool = True) -> int | None:
        value = self.args.get(name)
        if value is None or (not required and not value.strip()):
            if required:
                self.problems.append(f"missing parameter: {name}")
            return None
        try:
            number = int(value.strip(), 10)
        except ValueError:
            self.problems.append(f"{name} must be an integer, got {value!r}")
            return None
        if not low <= number <= high:
            self.problems.append(f"{name} must be between {low} and {high}, got {number}")
            return None
        return number

    def done(self) -> None:
        if self.problems:
            raise BadRequest("; ".join(self.problems))


@dataclass(frozen=True)
class TrainParams:
    model_url: str
    labeled_url: str
    rows: int  # img_width (Keras target_size[0])
    cols: int  # img_height
    epochs: int
    seed: int | None


@dataclass(frozen=True)
class PredictParams:
    model_url: str
    unlabeled_url: str
    rows: int
    cols: int


def train_params(args, limits: Limits) -> TrainParams:
    r = _Reader(args)
    model_url, labeled_url = r.text("model_url"), r.text("labeled_url")
    rows = r.integer("img_width", 1, limits.max_image_size)
    cols = r.integer("img_height", 1, limits.max_image_size)
    epochs = r.integer("epochs", 1, limits.max_epochs)
    seed = r.integer("seed", 0, 2**32 - 1, required=False)
    r.done()
    return TrainParams(model_url, labeled_url, rows, cols, epochs, seed)


def predict_params(args, limits: Limits) -> PredictParams:
    r = _Reader(args)
    model_url, unlabeled_url = r.text("model_url"), r.text("unlabeled_url")
    rows = r.integer("img_width", 1, limits.max_image_size)
    cols = r.integer("img_height", 1, limits.max_image_size)
    r.done()
    return PredictParams(model_url, unlabeled_url, rows, cols)
