"""Query parameters of /train, /predict, /embed and /query: every problem is collected and reported at once as a
400 naming the parameters. Parameters an endpoint does not use are accepted and ignored."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import BadRequest


@dataclass(frozen=True)
class Limits:
    max_image_size: int = 4096
    max_epochs: int = 1000


def limits(config: dict) -> Limits:
    """The bounds an app's config puts on request parameters (ORCA_MAX_IMAGE_SIZE, ORCA_MAX_EPOCHS)."""
    return Limits(max_image_size=config["MAX_IMAGE_SIZE"], max_epochs=config["MAX_EPOCHS"])


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
    # not a query parameter: entries the provenance sidecar gains (a training from Label Studio: its
    # project and annotations, `service.labelstudio.backend`)
    provenance: dict | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PredictParams:
    model_url: str
    unlabeled_url: str
    rows: int
    cols: int
    # not a query parameter: the URL the client reached the service at (ORCA_PUBLIC_URL or the HTTP request's),
    # the base of local clips' audio_url (`<service_url>/clips/…`); None: ORCA_PUBLIC_URL, else file:// URLs
    service_url: str | None = None


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


@dataclass(frozen=True)
class EmbedParams:
    predict: PredictParams


@dataclass(frozen=True)
class QueryParams:
    predict: PredictParams
    strategy: str
    k: int
    passes: int
    passes_given: bool
    seed: int | None
    labeled_url: str | None


DEFAULT_PASSES = 10  # Monte Carlo dropout passes of bald / variation_ratio
MAX_PASSES = 100


def embed_params(args, limits: Limits) -> EmbedParams:
    return EmbedParams(predict_params(args, limits))


def query_params(args, limits: Limits, max_k: int) -> QueryParams:
    from active_learning.acquisition import names

    r = _Reader(args)
    model_url, unlabeled_url = r.text("model_url"), r.text("unlabeled_url")
    rows = r.integer("img_width", 1, limits.max_image_size)
    cols = r.integer("img_height", 1, limits.max_image_size)
    strategy = (args.get("strategy") or "uncertainty").strip()
    if strategy not in names():
        r.problems.append(f"strategy must be one of {', '.join(names())}, got {strategy!r}")
    k = r.integer("k", 1, max_k)
    passes = r.integer("passes", 2, MAX_PASSES, required=False)
    seed = r.integer("seed", 0, 2**32 - 1, required=False)
    labeled_url = (args.get("labeled_url") or "").strip() or None
    r.done()
    return QueryParams(PredictParams(model_url, unlabeled_url, rows, cols), strategy, k,
                       passes or DEFAULT_PASSES, passes is not None, seed, labeled_url)
