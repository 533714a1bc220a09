"""/embed and /query over real HTTP, on local files and on S3 (moto), for the Keras srkw_cnn (.h5
through the bridge) and a registered torch model (.pt). The embedding is checked against tf_keras'
own activations of srkw_cnn's last hidden layer; `uncertainty` against the orcaal client's SQL."""

from __future__ import annotations

import shutil
import sqlite3

import torch  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest
import requests

from models.create import write_new_model
from service.app import create_app
from tests.ops_support import Served, upload_stack
from tests.repo_data import SRKW_COLS as COLS, SRKW_ROWS as ROWS, json_client

PREDICT_KEYS = {"audio_url", "duration", "location", "predicted_value", "timestamp"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, sample_dir, srkw_h5):
    """A local root: models/srkw_cnn_0.h5, models/small_cnn_0.pt, labeled/{train,validation}/<class>/,
    and unlabeled/spectrograms/ with the nine test clips plus the four validation ones."""
    root = tmp_path_factory.mktemp("selection")
    (root / "models").mkdir()
    shutil.copyfile(srkw_h5, root / "models" / "srkw_cnn_0.h5")
    write_new_model("small_cnn", root / "models" / "small_cnn_0.pt", ROWS, COLS, seed=0)
    for split in ("train", "validation"):
        shutil.copytree(sample_dir / split, root / "labeled" / split)
    spectrograms = root / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    clips = sorted(sample_dir.glob("test/*/*.png")) + sorted(sample_dir.glob("validation/*/*.png"))
    for i, png in enumerate(clips):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    return root


@pytest.fixture(scope="module")
def served(pool):
    served = Served(create_app({"LOCAL_ROOT": str(pool), "DEVICE": "cpu"}))
    yield served
    served.close()


def _get(served, path, **params):
    response = requests.get(served.base + path, params=params, timeout=300,
                            headers={"Accept": "application/json"})
    return response.status_code, response.json()


def _args(pool, model="srkw_cnn_0.h5", **extra):
    return {"model_url": str(pool / "models" / model), "unlabeled_url": str(pool / "unlabeled") + "/",
            "img_width": ROWS, "img_height": COLS, **extra}


def _keras_hidden(model_path, paths):
    """tf_keras' own input of the output layer (the last with weights), on images loaded as the original did."""
    import tf_keras

    from scoring.images import load_image

    model = tf_keras.models.load_model(model_path)
    output_layer = [layer for layer in model.layers if layer.weights][-1]
    hidden = tf_keras.Model(model.inputs, output_layer.input)
    return hidden.predict(np.stack([load_image(p, ROWS, COLS) for p in paths]), verbose=0)


@pytest.mark.slow
def test_embed_answers_predicts_items_plus_the_last_hidden_layer_of_keras(served, pool):
    status, predicted = _get(served, "/predict", **_args(pool))
    assert status == 200
    status, embedded = _get(served, "/embed", **_args(pool))
    assert status == 200
    assert [{k: row[k] for k in PREDICT_KEYS} for row in embedded] == predicted  # same items, same order
    embeddings = np.array([row["embedding"] for row in embedded], dtype=np.float32)
    assert embeddings.shape == (13, 256)  # srkw_cnn's Dense 256 feeds its output layer
    paths = sorted((pool / "unlabeled" / "spectrograms").glob("*.png"))
    reference = _keras_hidden(pool / "models" / "srkw_cnn_0.h5", paths)
    np.testing.assert_allclose(embeddings, reference, atol=1e-4 * max(1.0, np.abs(reference).max()))
    assert np.abs(embeddings).max() > 0


def test_embed_works_for_a_registered_torch_model(served, pool):
    status, embedded = _get(served, "/embed", **_args(pool, "small_cnn_0.pt"))
    assert status == 200 and len(embedded) == 13
    assert {len(row["embedding"]) for row in embedded} == {64}  # SmallCNN's pooled features feed its Linear
    assert embedded[0]["audio_url"] == f"{served.base}/clips/unlabeled/mp3/orcasoundlab_1594154118.mp3"  # served


def test_query_uncertainty_is_the_clients_own_order(served, pool):
    status, predicted = _get(served, "/predict", **_args(pool))
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE prediction (id INTEGER PRIMARY KEY, predicted_value FLOAT, audio_url TEXT)")
    db.executemany("INSERT INTO prediction (predicted_value, audio_url) VALUES (?, ?)",
                   [(p["predicted_value"], p["audio_url"]) for p in predicted])
    client = [row[0] for row in db.execute(
        "SELECT predicted_value FROM prediction ORDER BY abs(0.5 - predicted_value) LIMIT 5")]
    status, chosen = _get(served, "/query", **_args(pool, strategy="uncertainty", k=5))
    assert status == 200
    assert [row["predicted_value"] for row in chosen] == client
    assert [row["rank"] for row in chosen] == [1, 2, 3, 4, 5]
    assert [row["score"] for row in chosen] == [abs(0.5 - v) for v in client]
    assert set(chosen[0]) == PREDICT_KEYS | {"score", "rank"}
    assert {row["audio_url"] for row in chosen} <= {p["audio_url"] for p in predicted}
    assert all(row["audio_url"].startswith(f"{served.base}/clips/unlabeled/mp3/") for row in chosen)


@pytest.mark.slow
def test_query_bald_is_reproducible_with_a_seed_and_changes_with_passes(served, pool):
    args = _args(pool, strategy="bald", k=13, seed=3)
    _, first = _get(served, "/query", **args, passes=4)
    _, again = _get(served, "/query", **args, passes=4)
    _, more = _get(served, "/query", **args, passes=9)
    assert first == again
    scores = lambda rows: {r["audio_url"]: r["score"] for r in rows}  # noqa: E731
    assert scores(first) != scores(more)
    assert max(scores(first).values()) > 0  # srkw_cnn's dropout layers were active


def test_query_coreset_picks_distinct_clips_away_from_the_labeled_set(served, pool):
    """Greedy k-center from the labeled set: each pick is the clip farthest from every labeled image and
    earlier pick, its score that distance (in /embed's space; the labeled images' embeddings from tf_keras).
    With labeled_url ignored the first score would be inf and the four unlabeled copies of labeled
    validation clips (distance 0) could be picked."""
    status, chosen = _get(served, "/query", **_args(pool, strategy="coreset", k=4,
                                                      labeled_url=str(pool / "labeled") + "/"))
    assert status == 200 and len({row["audio_url"] for row in chosen}) == 4
    _, embedded = _get(served, "/embed", **_args(pool))
    pool_embeddings = {row["audio_url"]: np.array(row["embedding"], np.float64) for row in embedded}
    labeled_paths = sorted((pool / "labeled").glob("*/*/*.png"))
    centers = list(_keras_hidden(pool / "models" / "srkw_cnn_0.h5", labeled_paths).astype(np.float64))

    def distance_to_centers(x):
        return min(float(np.linalg.norm(x - c)) for c in centers)

    spread = max(distance_to_centers(x) for x in pool_embeddings.values())
    copies = {url for url, x in pool_embeddings.items() if distance_to_centers(x) < 1e-3 * spread}
    assert len(copies) == 4  # the validation clips the pool shares with the labeled set
    for row in chosen:
        distances = {url: distance_to_centers(x) for url, x in pool_embeddings.items()
                     if url not in {c["audio_url"] for c in chosen[:row["rank"] - 1]}}
        assert distances[row["audio_url"]] == pytest.approx(max(distances.values()), rel=1e-4)  # the farthest
        assert row["score"] == pytest.approx(distances[row["audio_url"]], rel=1e-4) and row["score"] > 0
        centers.append(pool_embeddings[row["audio_url"]])
    assert not copies & {row["audio_url"] for row in chosen}


def test_query_badge_and_random_on_a_torch_model(served, pool):
    for strategy in ("badge", "random", "variation_ratio", "entropy"):
        status, chosen = _get(served, "/query", **_args(pool, "small_cnn_0.pt", strategy=strategy, k=3, seed=1))
        assert status == 200, chosen
        assert len({row["audio_url"] for row in chosen}) == 3, strategy


@pytest.mark.parametrize("extra,named", [
    ({"strategy": "smartest"}, "strategy"),
    ({"k": "0"}, "k"),
    ({"k": "many"}, "k"),
    ({"k": "3", "passes": "1", "strategy": "bald"}, "passes"),
])
def test_bad_query_parameters_are_400_naming_them(pool, extra, named):
    client = json_client(create_app({"LOCAL_ROOT": str(pool)}))
    args = {"k": "3", **_args(pool), **extra}
    response = client.get("/query", query_string=args)
    assert response.status_code == 400 and named in response.get_json()["error"]


def test_query_without_k_is_400(pool):
    response = json_client(create_app({"LOCAL_ROOT": str(pool)})).get("/query", query_string=_args(pool))
    assert response.status_code == 400 and "missing parameter: k" in response.get_json()["error"]


def test_a_newly_declared_strategy_is_served_by_query_with_what_it_needs(pool, monkeypatch):
    """A strategy declared once (active_learning.acquisition.strategy) is a valid `strategy` of /query,
    and the service computes what it declares it needs (here the embeddings) and nothing else."""
    from active_learning import acquisition

    monkeypatch.setattr(acquisition, "_REGISTRY", dict(acquisition._REGISTRY))  # undone after the test
    seen = {}

    @acquisition.strategy("farthest_from_origin", needs=acquisition.Needs(embeddings=True),
                          score="the embedding's norm", first="largest")
    def farthest(given, k, rng):
        seen.update(passes=given.passes, labeled=given.labeled_embeddings, shape=given.embeddings.shape)
        return acquisition.top_k(np.linalg.norm(given.embeddings, axis=1), k, largest=True)

    client = json_client(create_app({"LOCAL_ROOT": str(pool), "DEVICE": "cpu"}))
    answer = client.get("/query", query_string=_args(pool, k=3, strategy="farthest_from_origin",
                                                       labeled_url=str(pool / "labeled") + "/"))
    assert answer.status_code == 200, answer.get_json()
    embedded = client.get("/embed", query_string=_args(pool)).get_json()
    norms = np.array([np.linalg.norm(item["embedding"]) for item in embedded])
    expected = [embedded[i]["audio_url"] for i in np.argsort(-norms, kind="stable")[:3]]
    assert [item["audio_url"] for item in answer.get_json()] == expected
    assert seen["passes"] is None and seen["labeled"] is None  # not declared: not computed
    assert seen["shape"][0] == len(embedded)


def test_query_and_embed_over_s3(s3_env, srkw_h5, tmp_path):
    upload_stack(s3_env.client(), s3_env.bucket, srkw_h5)
    served = Served(create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache")}))
    try:
        base = {"model_url": f"s3://{s3_env.bucket}/models/srkw_cnn_0.h5",
                "unlabeled_url": f"s3://{s3_env.bucket}/unlabeled/", "img_width": ROWS, "img_height": COLS}
        registry = served.app.extensions["orca"].metrics.registry
        decodes = lambda: registry.get_sample_value("orca_pixel_decodes_total")  # noqa: E731
        status, _ = _get(served, "/predict", **base)
        assert status == 200 and decodes() == 3
        status, embedded = _get(served, "/embed", **base)
        assert status == 200 and len(embedded) == 3 and len(embedded[0]["embedding"]) == 256
        assert decodes() == 3  # the embedding pass took /predict's pixels from the cache
        assert embedded[0]["audio_url"].startswith(f"https://{s3_env.bucket}.s3.amazonaws.com/unlabeled/mp3/")
        status, chosen = _get(served, "/query", **base, strategy="coreset", k=2,
                              labeled_url=f"s3://{s3_env.bucket}/labeled/")
        assert status == 200 and len({row["audio_url"] for row in chosen}) == 2
    finally:
        served.close()


def test_an_onnx_model_embeds_like_the_torch_model_it_came_from_and_refuses_monte_carlo(served, pool):
    from conversion.converting import convert

    onnx_path = pool / "models" / "small_cnn_onnx_0.onnx"
    if not onnx_path.exists():
        convert(str(pool / "models" / "small_cnn_0.pt"), str(onnx_path))
    _, from_torch = _get(served, "/embed", **_args(pool, "small_cnn_0.pt"))
    status, from_onnx = _get(served, "/embed", **_args(pool, onnx_path.name))
    assert status == 200
    np.testing.assert_allclose([r["embedding"] for r in from_onnx], [r["embedding"] for r in from_torch],
                               atol=1e-5)
    status, body = _get(served, "/query", **_args(pool, onnx_path.name, strategy="bald", k=2))
    assert status == 422 and "no dropout layers" in body["error"]
