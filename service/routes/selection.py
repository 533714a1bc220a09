"""/embed and /query: parameters in, JSON out; the work is `service.selection`.

/embed streams its JSON array item by item: 10,000 clips × 256 floats is ~25 MB of JSON, built
while it is sent rather than held twice (docs/api.md).
"""

from __future__ import annotations

import dataclasses
import json

from flask import Blueprint, Response, jsonify, request

from ..params import embed_params, limits, query_params
from ..selection import run_embed, run_query
from .web import current_runtime, policy, service_url

selection = Blueprint("selection", __name__)


@selection.get("/embed")
@policy(urls=("model_url", "unlabeled_url"))
def embed():
    """?model_url&unlabeled_url&img_width&img_height: /predict's items plus each clip's embedding"""
    runtime = current_runtime()
    params = embed_params(request.args, limits(runtime.config))
    pool = run_embed(runtime, dataclasses.replace(params, predict=_served(params.predict)))

    def rows():
        yield "["
        for i, item in enumerate(pool.items):
            row = dict(item, embedding=[float(v) for v in pool.embeddings[i]])
            yield ("," if i else "") + json.dumps(row, sort_keys=True)
        yield "]\n"

    response = Response(rows(), mimetype="application/json")
    response.headers["X-Skipped-Files"] = str(len(getattr(pool.items, "skipped", ())))
    if pool.embeddings is not None:
        response.headers["X-Embedding-Size"] = str(pool.embeddings.shape[1])
    return response


@selection.get("/query")
@policy(urls=("model_url", "unlabeled_url", "labeled_url"))
def query():
    """?model_url&unlabeled_url&img_width&img_height&k[&strategy&passes&seed&labeled_url]: the k clips to label next"""
    runtime = current_runtime()
    params = query_params(request.args, limits(runtime.config), runtime.config["MAX_LISTING"])
    return jsonify(run_query(runtime, dataclasses.replace(params, predict=_served(params.predict))))


def _served(params):
    """The /predict parameters of the request, with the URL its client reached the service at (local audio_url)."""
    return dataclasses.replace(params, service_url=service_url())
