"""The work behind /embed and /query (and `orca embed` / `orca query`): what the model sees in each
unlabeled clip, and which clips to label next. Plain functions of a `Runtime`, no Flask; the routes
are `service.routes.selection`.

Both start from /predict's own work (`runtime.run_predict`: same clips, same order, same
`predicted_value`, score cache included), so `uncertainty` ranks clips exactly as the orcaal client
does with those values. When a strategy needs more than P(class 1), the model is loaded as a torch
module (`conversion.formats.load_trainable`: .h5 through the bridge, .onnx, registered .pt) and the
same clips' pixels are read again (from the app's pixel cache: /predict has just decoded them) for
`active_learning.embedding.ModelProbe`: embeddings (the input of the
output layer) and Monte Carlo dropout passes. The strategies themselves are `active_learning.acquisition`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.clips import ClipDecoder
from scoring.images import decode_image
from scoring.stream import stream_batches

from .datasets import model_errors, name_urls, unprocessable
from .errors import BadRequest, Conflict
from .params import EmbedParams, PredictParams
from .predict import clip_files, pixel_identity

log = logging.getLogger(__name__)


@dataclass
class ProbedPool:
    items: list[dict]  # /predict's items, in its order
    embeddings: np.ndarray | None = None  # float32 (n, d), row i ↔ items[i]
    passes: np.ndarray | None = None  # float64 (passes, n): P(class 1) per Monte Carlo dropout pass
    labeled_embeddings: np.ndarray | None = None  # float32 (m, d): the labeled set's, when asked for


def run_embed(runtime, params: EmbedParams) -> ProbedPool:
    """/predict's items and each one's embedding (row i of `embeddings` ↔ `items[i]`)."""
    return probe_pool(runtime, params.predict, embeddings=True)


def run_query(runtime, params) -> list[dict]:
    """The k clips to label next: /predict's fields plus `score` and `rank` (1 = label first)."""
    from active_learning.acquisition import StrategyError, needs, select

    wanted = needs(params.strategy, passes_given=params.passes_given)
    pool = probe_pool(runtime, params.predict, embeddings=wanted.embeddings,
                      passes=params.passes if wanted.passes else 0, seed=params.seed or 0,
                      labeled_url=params.labeled_url if wanted.labeled_embeddings else None)
    if not pool.items:
        return []
    probabilities = np.array([item["predicted_value"] for item in pool.items], dtype=np.float64)
    try:
        chosen = select(params.strategy, params.k, probabilities=probabilities, passes=pool.passes,
                        embeddings=pool.embeddings, labeled_embeddings=pool.labeled_embeddings, seed=params.seed)
    except StrategyError as error:
        raise BadRequest(str(error)) from None
    answer = []
    for rank, (index, score) in enumerate(zip(chosen.indices.tolist(), chosen.scores.tolist()), start=1):
        answer.append(dict(pool.items[index], score=score if np.isfinite(score) else None, rank=rank))
    return answer


# --------------------------------------------------------------------------- the torch pass

def _model_probe(runtime, model_path: str):
    from conversion.formats import load_trainable
    from active_learning.embedding import ModelProbe

    return ModelProbe(load_trainable(model_path), device=runtime.config["DEVICE"],
                      batch_size=runtime.config["BATCH_SIZE"])


def _batch_seed(seed: int, batch: int) -> int:
    """Independent, reproducible dropout masks per batch (the answer depends on seed and batch size)."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def probe_pool(runtime, params: PredictParams, *, embeddings: bool, passes: int = 0, seed: int = 0,
               labeled_url: str | None = None) -> ProbedPool:
    """/predict's items, and the embeddings and/or MC dropout passes of the same clips; with
    `labeled_url` (and `embeddings`), the embeddings of that labeled set too. The model is loaded once."""
    items = runtime.run_predict(runtime, params)
    if not items or not (embeddings or passes):
        return ProbedPool(items)
    unlabeled = runtime.locate(params.unlabeled_url, "unlabeled_url")
    listed = dict(items.clips)
    clips = [(name, listed[name]) for name in items.names]  # /predict's items, in its order
    model_path = runtime.cache.model(runtime.locate(params.model_url, "model_url"))
    replacements = {model_path: params.model_url}
    embedded, scored, labeled = [], [], None
    try:
        probe = _model_probe(runtime, model_path)
        probe.check_size(params.rows, params.cols)
        with clip_files(runtime, unlabeled, items.clips, replacements) as fetch:
            batches = stream_batches(clips, fetch, params.rows, params.cols, probe.batch_size,
                                     workers=runtime.config["DOWNLOAD_THREADS"], skip_unreadable=True,
                                     max_pixels=runtime.config["MAX_PIXELS"], decode=runtime.scorers.decode,
                                     cache=runtime.pixels, identity=pixel_identity)
            for number, batch in enumerate(batches):
                if batch.skipped:
                    raise Conflict(f"{batch.skipped[0][0][0]} became unreadable during the request; try again")
                if embeddings:
                    embedded.append(probe.embed(batch.pixels)[0])
                if passes:
                    scored.append(probe.mc_passes(batch.pixels, passes, _batch_seed(seed, number)))
        if embeddings and labeled_url:
            labeled = _labeled_embeddings(runtime, probe, params, labeled_url, replacements)
    except model_errors() as error:
        raise unprocessable(error, replacements) from error
    return ProbedPool(items, np.concatenate(embedded) if embedded else None,
                      np.concatenate(scored, axis=1) if scored else None, labeled)


def _decoder(probe) -> ClipDecoder:
    """What training decodes the labeled set with (PIL for images, so the pixels a /train cached are
    found); audio rendered a batch at a time on the probe's device where it is CUDA."""
    device = getattr(probe, "device", None)
    return ClipDecoder(decode_image, device=device if getattr(device, "type", None) == "cuda" else None)


def _labeled_embeddings(runtime, probe, params: PredictParams, labeled_url: str, replacements: dict) -> np.ndarray:
    """Embeddings of the `train/<class>/` and `validation/<class>/` images and audio of `labeled_url` (coreset's
    already-labeled centers), in the order of their keys; pixels a /train decoded come from the cache."""
    from .train import fetch_labeled

    labeled = runtime.locate(labeled_url, "labeled_url")
    with tempfile.TemporaryDirectory(prefix="orca-query-", dir=runtime.config["WORK_DIR"]) as folder:
        identities: dict = {}
        fetch_labeled(runtime, labeled, folder, identities=identities)
        replacements[folder + os.sep] = labeled.prefix_url
        paths = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())
        out = []
        for batch in stream_batches(paths, None, params.rows, params.cols, probe.batch_size,
                                    skip_unreadable=True, max_pixels=runtime.config["MAX_PIXELS"],
                                    decode=_decoder(probe), cache=runtime.pixels,
                                    identity=lambda path: identities.get(os.path.normpath(path))):
            for _, reason in batch.skipped:
                log.warning("query: skipped a labeled clip: %s", name_urls(reason, replacements))
            if batch.items:
                out.append(probe.embed(batch.pixels)[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
