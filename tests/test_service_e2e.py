"""End to end over real HTTP: moto's S3 server + the service on werkzeug, the client's sequence
(/train, then /predict), every key checked, compared with the original tf_keras pipeline."""

import json
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request

import torch  # noqa: F401  (before TensorFlow)
import boto3
import numpy as np
import pytest
from werkzeug.serving import make_server

from repo_data import SAMPLE_DIR as SAMPLE, SRKW_COLS as COLS, SRKW_ROWS as ROWS
from service import create_app

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

BUCKET = "orcagsoc"
T0 = 1594154118
TRAIN_KEYS = {"acc", "val_acc", "loss", "val_loss", "cm", "labeled_files", "model_acc", "model_loss", "model_url"}
ITEM_KEYS = {"audio_url", "duration", "location", "predicted_value", "timestamp"}


def _serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


class Stack:
    def __init__(self, base, s3, local_root):
        self.base, self.s3, self.local_root = base, s3, local_root

    def get(self, path, **params):
        """GET preferring JSON, as an API client that reads error bodies does (the legacy client's
        plain-text errors: tests/test_legacy_client.py)."""
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            assert error.headers.get_content_type() == "application/json", body
            return error.code, json.loads(body)

    def keys(self, prefix):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))

    def put_file(self, key, path):
        self.s3.upload_file(str(path), BUCKET, key)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_server, use_s3_endpoint, srkw_h5):
    work = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as mp:
        use_s3_endpoint(mp, moto_server)  # the session's moto server, the bucket BUCKET of this module
        mp.setenv("ORCA_CACHE_DIR", str(work / "cache"))
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(srkw_h5, BUCKET, "models/srkw_cnn_0.h5")
        for png in SAMPLE.glob("*/*/*.png"):
            split, cls = png.parent.parent.name, png.parent.name
            if split in ("train", "validation"):
                s3.upload_file(str(png), BUCKET, f"labeled_test/{split}/{cls}/{png.name}")
        s3.put_object(Bucket=BUCKET, Key="labeled_test/mp3/calls/extracted_calls1.mp3", Body=b"ID3")
        for i, png in enumerate(sorted(SAMPLE.glob("test/*/*.png"))[:6]):
            stem = f"orcasoundlab_{T0 + 3 * i}"
            s3.upload_file(str(png), BUCKET, f"unlabeled_test/spectrograms/{stem}.png")
            s3.put_object(Bucket=BUCKET, Key=f"unlabeled_test/mp3/{stem}.mp3", Body=b"ID3")
        extra = sorted(SAMPLE.glob("test/*/*.png"))
        s3.upload_file(str(extra[6]), BUCKET, "unlabeled_test/spectrograms/port_townsend_1600000000.png")
        s3.upload_file(str(extra[7]), BUCKET, "unlabeled_test/spectrograms/extracted_calls1.png")
        local_root = work / "local"
        local_root.mkdir()
        server, thread = _serve(create_app({"LOCAL_ROOT": str(local_root), "DEVICE": "cpu"}))
        try:
            yield Stack(f"http://127.0.0.1:{server.server_port}", s3, local_root)
        finally:
            server.shutdown()
            thread.join()


def _download(stack, key, path):
    stack.s3.download_file(BUCKET, key, str(path))
    return path


def _tf_keras():
    import tf_keras

    return tf_keras


def _keras_predict(model_path, image_dir, rows, cols):
    """The original /predict: ImageDataGenerator(rescale=1/255).flow_from_directory(class_mode=None)."""
    keras = _tf_keras()
    model = keras.models.load_model(str(model_path))
    gen = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        str(image_dir), target_size=(rows, cols), class_mode=None, shuffle=False, batch_size=32)
    values = model.predict(gen, verbose=0)[:, 0]
    return [os.path.basename(f) for f in gen.filenames], values


def test_root_lists_the_endpoints(stack):
    status, body = stack.get("/")
    assert status == 200 and set(body["endpoints"]) >= {"/train", "/predict"} and body["version"]


@pytest.mark.slow  # ~5 s
def test_client_sequence_train_then_predict(stack, tmp_path):
    status, body = stack.get("/train", model_url=f"s3://{BUCKET}/models/srkw_cnn_0.h5",
                             labeled_url=f"s3://{BUCKET}/labeled_test/", img_width=ROWS, img_height=COLS,
                             epochs=2, seed=0)
    assert status == 200, body
    assert set(body) == TRAIN_KEYS
    for name in ("acc", "val_acc", "loss", "val_loss"):
        assert len(body[name]) == 2 and all(isinstance(v, float) for v in body[name])
    tn, fp, fn, tp = body["cm"]
    assert all(isinstance(v, int) for v in body["cm"]) and tn + fp + fn + tp == 4
    assert body["labeled_files"] == 10
    assert body["model_url"] == f"s3://{BUCKET}/models/srkw_cnn_1.h5"
    assert 0 <= body["model_acc"] <= 1 and body["model_loss"] > 0
    assert body["model_acc"] == pytest.approx((tn + tp) / 4)
    assert [k for k in stack.keys("models/") if k.endswith(".h5")] == ["models/srkw_cnn_0.h5", "models/srkw_cnn_1.h5"]
    assert {"models/srkw_cnn_1.json", "models/srkw_cnn_1.png"} <= set(stack.keys("models/"))  # provenance

    # the written model is a Keras model that evaluates on validation to model_acc / model_loss
    model_path = _download(stack, "models/srkw_cnn_1.h5", tmp_path / "srkw_cnn_1.h5")
    keras = _tf_keras()
    model = keras.models.load_model(str(model_path))
    val = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        str(SAMPLE / "validation"), target_size=(ROWS, COLS), class_mode="binary", shuffle=False)
    loss, acc = model.evaluate(val, verbose=0)
    assert acc == pytest.approx(body["model_acc"], abs=1e-4)
    assert loss == pytest.approx(body["model_loss"], abs=1e-4)

    # /predict with the new model: sorted by file name, every key and value as the original
    status, items = stack.get("/predict", model_url=body["model_url"],
                              unlabeled_url=f"s3://{BUCKET}/unlabeled_test", img_width=ROWS, img_height=COLS,
                              epochs=99)
    assert status == 200, items
    stems = [f"orcasoundlab_{T0 + 3 * i}" for i in range(6)]
    expected_names = sorted(stems + ["port_townsend_1600000000", "extracted_calls1"])
    assert len(items) == 8
    for item, stem in zip(items, expected_names):
        assert set(item) == ITEM_KEYS
        assert item["audio_url"] == f"https://{BUCKET}.s3.amazonaws.com/unlabeled_test/mp3/{stem}.mp3"
        assert item["duration"] == 3
        assert 0.0 <= item["predicted_value"] <= 1.0
    by_stem = dict(zip(expected_names, items))
    assert by_stem["orcasoundlab_1594154118"]["location"] == "Haro Strait"
    assert by_stem["orcasoundlab_1594154118"]["timestamp"] == "Tue, 07 Jul 2020 20:35:18 GMT"
    assert by_stem["orcasoundlab_1594154121"]["timestamp"] == "Tue, 07 Jul 2020 20:35:21 GMT"
    assert by_stem["port_townsend_1600000000"]["location"] == "Port Townsend"
    assert by_stem["port_townsend_1600000000"]["timestamp"] == "Sun, 13 Sep 2020 12:26:40 GMT"
    assert by_stem["extracted_calls1"]["location"] is None and by_stem["extracted_calls1"]["timestamp"] is None

    # same numbers as the original tf_keras ImageDataGenerator pipeline on the same files
    unlabeled = tmp_path / "unlabeled" / "spectrograms"
    unlabeled.mkdir(parents=True)
    for key in stack.keys("unlabeled_test/spectrograms/"):
        _download(stack, key, unlabeled / os.path.basename(key))
    names, reference = _keras_predict(model_path, unlabeled.parent, ROWS, COLS)
    assert [os.path.splitext(n)[0] for n in names] == expected_names
    np.testing.assert_allclose([i["predicted_value"] for i in items], reference, atol=1e-4)

    # the client moves a clip out of unlabeled/: the next /predict no longer returns it
    gone = "unlabeled_test/spectrograms/orcasoundlab_1594154121.png"
    png = _download(stack, gone, tmp_path / "gone.png")
    stack.s3.delete_object(Bucket=BUCKET, Key=gone)
    try:
        status, again = stack.get("/predict", model_url=body["model_url"],
                                  unlabeled_url=f"s3://{BUCKET}/unlabeled_test/", img_width=ROWS, img_height=COLS)
        assert status == 200
        assert [i["audio_url"] for i in again] == [i["audio_url"] for i in items
                                                   if "orcasoundlab_1594154121" not in i["audio_url"]]
    finally:
        stack.put_file(gone, png)


def test_concurrent_trains_from_the_same_model_write_distinct_versions(stack):
    before = {k: stack.s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in stack.keys("models/")}
    results = []

    def train():
        results.append(stack.get("/train", model_url=f"s3://{BUCKET}/models/srkw_cnn_0.h5",
                                 labeled_url=f"s3://{BUCKET}/labeled_test", img_width=ROWS, img_height=COLS,
                                 epochs=1))

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200, 200], results
    written = sorted(body["model_url"] for _, body in results)
    assert len(set(written)) == 2
    assert all(url.startswith(f"s3://{BUCKET}/models/srkw_cnn_") for url in written)
    new = {k for k in stack.keys("models/") if k.endswith(".h5")} - set(before)
    assert {f"s3://{BUCKET}/{k}" for k in new} == set(written)
    for key, etag in before.items():  # nothing existing was overwritten
        assert stack.s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == etag


# ---------------------------------------------------------------------------------------- errors

def _train_args(**overrides):
    args = dict(model_url=f"s3://{BUCKET}/models/srkw_cnn_0.h5", labeled_url=f"s3://{BUCKET}/labeled_test/",
                img_width=ROWS, img_height=COLS, epochs=1)
    args.update(overrides)
    return {k: v for k, v in args.items() if v is not None}


def _predict_args(**overrides):
    args = dict(model_url=f"s3://{BUCKET}/models/srkw_cnn_0.h5", unlabeled_url=f"s3://{BUCKET}/unlabeled_test/",
                img_width=ROWS, img_height=COLS)
    args.update(overrides)
    return {k: v for k, v in args.items() if v is not None}


@pytest.mark.parametrize("path, args, named", [
    ("/train", {}, "model_url"),
    ("/train", _train_args(labeled_url=None), "labeled_url"),
    ("/train", _train_args(epochs=None), "epochs"),
    ("/train", _train_args(epochs="two"), "epochs"),
    ("/train", _train_args(epochs=0), "epochs"),
    ("/train", _train_args(img_width=-5), "img_width"),
    ("/train", _train_args(img_height="1e3"), "img_height"),
    ("/predict", _predict_args(unlabeled_url=None), "unlabeled_url"),
    ("/predict", _predict_args(img_width=None), "img_width"),
    ("/predict", _predict_args(model_url="ftp://x/m.h5"), "model_url"),
])
def test_bad_parameters_are_400_naming_them(stack, path, args, named):
    status, body = stack.get(path, **args)
    assert status == 400 and named in body["error"] and "Traceback" not in body["error"]


@pytest.mark.parametrize("path, args, url", [
    ("/train", _train_args(model_url=f"s3://{BUCKET}/models/no_model_0.h5"), f"s3://{BUCKET}/models/no_model_0.h5"),
    ("/predict", _predict_args(model_url=f"s3://{BUCKET}/models/no_model_0.h5"),
     f"s3://{BUCKET}/models/no_model_0.h5"),
    ("/train", _train_args(labeled_url=f"s3://{BUCKET}/no_such_labeled/"), f"s3://{BUCKET}/no_such_labeled/"),
    ("/predict", _predict_args(unlabeled_url=f"s3://{BUCKET}/nothing_here"), f"s3://{BUCKET}/nothing_here"),
    ("/predict", _predict_args(model_url="s3://no-such-bucket/m_0.h5"), "s3://no-such-bucket/m_0.h5"),
])
def test_missing_model_or_dataset_is_404_naming_the_url(stack, path, args, url):
    status, body = stack.get(path, **args)
    assert status == 404 and url in body["error"], body


def test_non_hdf5_model_is_422_and_writes_nothing(stack):
    stack.s3.put_object(Bucket=BUCKET, Key="bad/not_a_model_0.h5", Body=b"this is not HDF5")
    status, body = stack.get("/train", **_train_args(model_url=f"s3://{BUCKET}/bad/not_a_model_0.h5"))
    assert status == 422 and body["error"], body
    assert f"s3://{BUCKET}/bad/not_a_model_0.h5" in body["error"]
    status, body = stack.get("/predict", **_predict_args(model_url=f"s3://{BUCKET}/bad/not_a_model_0.h5"))
    assert status == 422, body
    assert stack.keys("bad/") == ["bad/not_a_model_0.h5"]


def test_single_class_labeled_set_is_422(stack):
    for png in SAMPLE.glob("*/calls/*.png"):
        if png.parent.parent.name in ("train", "validation"):
            stack.put_file(f"one_class/{png.parent.parent.name}/calls/{png.name}", png)
    before = stack.keys("models/")
    status, body = stack.get("/train", **_train_args(labeled_url=f"s3://{BUCKET}/one_class/"))
    assert status == 422 and "class" in body["error"], body
    assert stack.keys("models/") == before


def test_labeled_set_without_validation_is_422(stack):
    for png in SAMPLE.glob("train/*/*.png"):
        stack.put_file(f"no_validation/train/{png.parent.name}/{png.name}", png)
    status, body = stack.get("/train", **_train_args(labeled_url=f"s3://{BUCKET}/no_validation/"))
    assert status == 422 and "validation" in body["error"], body


def test_image_size_not_matching_the_model_is_422(stack):
    before = stack.keys("models/")
    status, body = stack.get("/train", **_train_args(img_width=ROWS + 10))
    assert status == 422, body
    status, body = stack.get("/predict", **_predict_args(img_height=COLS - 1))
    assert status == 422, body
    assert stack.keys("models/") == before


def test_corrupt_spectrogram_is_skipped_not_scored(stack):
    """A corrupt file is skipped (counted in X-Skipped-Files, see tests/test_perf_predict_robustness.py)."""
    stack.s3.put_object(Bucket=BUCKET, Key="corrupt/spectrograms/orcasoundlab_1594154118.png", Body=b"not a png")
    stack.put_file("corrupt/spectrograms/orcasoundlab_1594154121.png", sorted(SAMPLE.glob("test/*/*.png"))[0])
    status, body = stack.get("/predict", **_predict_args(unlabeled_url=f"s3://{BUCKET}/corrupt/"))
    assert status == 200, body
    assert [item["audio_url"].rsplit("/", 1)[1] for item in body] == ["orcasoundlab_1594154121.mp3"]


def test_unlabeled_set_without_spectrograms_is_an_empty_list(stack):
    stack.s3.put_object(Bucket=BUCKET, Key="only_mp3/mp3/orcasoundlab_1594154118.mp3", Body=b"ID3")
    assert stack.get("/predict", **_predict_args(unlabeled_url=f"s3://{BUCKET}/only_mp3/")) == (200, [])


def test_local_path_outside_the_data_root_is_403(stack, tmp_path):
    status, body = stack.get("/predict", **_predict_args(model_url=str(tmp_path / "m_0.h5")))
    assert status == 403 and "outside" in body["error"]


def test_unreachable_s3_endpoint_is_503(stack, monkeypatch, tmp_path):
    """An app whose S3 endpoint is a closed port (the app makes its client from the environment at its
    first S3 call, so this one sees the dead endpoint; `stack`'s own app keeps its client)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    app = create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "S3_MAX_ATTEMPTS": 1, "CACHE_DIR": str(tmp_path)})
    response = app.test_client().get("/predict", query_string=_predict_args(), headers={"Accept": "application/json"})
    assert response.status_code == 503 and "cannot reach" in response.get_json()["error"], response.get_json()
    assert stack.get("/health")[0] == 200


def test_unknown_route_is_json_404(stack):
    status, body = stack.get("/nope")
    assert status == 404 and "error" in body


# ------------------------------------------------------------------------- local data, full size

@pytest.mark.slow
def test_demo_layout_predicts_with_the_full_size_srkw_cnn_like_tf_keras(stack):
    from service.demo import prepare

    root = stack.local_root / "demo"
    sample = stack.local_root / "sample"
    for split in ("train", "validation"):
        shutil.copytree(SAMPLE / split, sample / split)
    (sample / "test" / "calls").mkdir(parents=True)
    for png in sorted(SAMPLE.glob("test/*/*.png"))[:3]:  # a few images keep it quick
        shutil.copyfile(png, sample / "test" / "calls" / png.name)
    urls = prepare(root, sample)
    status, items = stack.get("/predict", model_url=urls["model_url"], unlabeled_url=urls["unlabeled_url"],
                              img_width=607, img_height=617)
    assert status == 200, items
    spectrograms = root / "unlabeled" / "spectrograms"
    assert [i["audio_url"] for i in items] == [  # served by the service itself, under its local root
        f"{stack.base}/clips/demo/unlabeled/mp3/orcasoundlab_{T0 + 3 * i}.mp3" for i in range(3)]
    assert [i["timestamp"] for i in items] == [
        "Tue, 07 Jul 2020 20:35:18 GMT", "Tue, 07 Jul 2020 20:35:21 GMT", "Tue, 07 Jul 2020 20:35:24 GMT"]
    assert {i["location"] for i in items} == {"Haro Strait"}
    names, reference = _keras_predict(root / "models" / "srkw_cnn_0.h5", spectrograms.parent, 607, 617)
    assert names == sorted(os.listdir(spectrograms))
    np.testing.assert_allclose([i["predicted_value"] for i in items], reference, atol=1e-4)
