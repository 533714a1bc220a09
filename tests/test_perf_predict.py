"""Issue 4 /predict path: ONNX Runtime scoring without torch in the service, the model and prefix
caches (URL + ETag, deletions followed), streaming, and skipping unreadable / oversized images."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch  # noqa: F401  (before anything that may import TensorFlow)
import numpy as np
import pytest
from PIL import Image

from service import create_app
from service.params import PredictParams
from service.runtime import Runtime
from service.storage import S3Connector
from scoring.errors import ImageError
from scoring.images import decode_image
from scoring.stream import decode_checked, stream_batches

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "orcasound"
ROWS, COLS = 67, 83
GOOD = sorted(SAMPLE.glob("test/*/*.png"))[1:4]  # two calls and a nocall: model_h5 scores them ~0.36-0.64


@pytest.fixture(scope="module")
def model_h5(spread_srkw_h5):
    """The session's srkw_cnn whose scores spread over ≥ 0.2 (conftest.spread_srkw_h5), read only: the
    comparisons of ONNX Runtime and torch below would pass on a fresh model's ≈ 0.5 whatever went wrong."""
    return spread_srkw_h5


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def runtime(cache_dir, **config) -> Runtime:
    return Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(cache_dir),
                                "ONNX_CACHE": None, **config})


def _params(model_url, unlabeled_url):
    return PredictParams(model_url=model_url, unlabeled_url=unlabeled_url, rows=ROWS, cols=COLS)


def _names(items):
    return [item["audio_url"].rsplit("/", 1)[1].rsplit(".", 1)[0] for item in items]


# ------------------------------------------------------------------------------- decoding, streaming

def test_decode_checked_is_bit_identical_and_refuses_oversized(tmp_path):
    for path in GOOD:
        np.testing.assert_array_equal(decode_checked(path, ROWS, COLS, max_pixels=10**6),
                                      decode_image(path, ROWS, COLS))
    with pytest.raises(ImageError, match="more than the limit"):
        decode_checked(GOOD[0], ROWS, COLS, max_pixels=640 * 480 - 1)
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (400, 300)).save(bomb)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # PIL itself raises DecompressionBombError above twice its limit
    try:
        with pytest.raises(ImageError, match="bomb.png"):
            decode_checked(bomb, ROWS, COLS, max_pixels=10**9)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(GOOD[0].read_bytes()[:2000])  # a truncated PNG
    with pytest.raises(ImageError, match="corrupt.png"):
        decode_checked(corrupt, ROWS, COLS, max_pixels=10**6)


def test_stream_batches_keeps_order_skips_and_propagates_fetch_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    items = [GOOD[0], bad, GOOD[1], GOOD[2], GOOD[0]]
    batches = list(stream_batches(items, None, ROWS, COLS, batch_size=2, workers=3, skip_unreadable=True))
    assert [b.items for b in batches] == [[GOOD[0], GOOD[1]], [GOOD[2], GOOD[0]]]
    assert [item for b in batches for item, _ in b.skipped] == [bad]
    np.testing.assert_array_equal(batches[0].pixels[1], decode_image(GOOD[1], ROWS, COLS))
    with pytest.raises(ImageError):
        list(stream_batches(items, None, ROWS, COLS, batch_size=2))

    def failing(item):
        raise ConnectionError("storage down")

    with pytest.raises(ConnectionError):
        list(stream_batches(items, failing, ROWS, COLS, batch_size=2, skip_unreadable=True))


# ------------------------------------------------------------------------------- /predict, local data

def _local_unlabeled(root: Path) -> Path:
    spectrograms = root / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    for i, png in enumerate(GOOD):
        (spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png").write_bytes(png.read_bytes())
    (spectrograms / "orcasoundlab_1594154200.png").write_bytes(GOOD[0].read_bytes()[:3000])  # corrupt
    (spectrograms / "orcasoundlab_1594154300.png").write_text("this is not an image")  # non-image
    Image.new("RGBA", (1000, 600), (10, 20, 30, 255)).save(spectrograms / "orcasoundlab_1594154400.png")  # > limit
    return root / "unlabeled"


def test_predict_skips_corrupt_nonimage_and_oversized_files(tmp_path, model_h5, cache_dir, caplog):
    unlabeled = _local_unlabeled(tmp_path / "data")
    model = tmp_path / "data" / "srkw_cnn_0.h5"
    model.write_bytes(Path(model_h5).read_bytes())
    # the samples have 640x480 = 307200 pixels
    app = create_app({"LOCAL_ROOT": str(tmp_path / "data"), "DEVICE": "cpu", "CACHE_DIR": str(cache_dir),
                      "MAX_PIXELS": 500_000})
    with caplog.at_level("WARNING", logger="service.predict"):
        response = app.test_client().get("/predict", query_string=dict(
            model_url=str(model), unlabeled_url=str(unlabeled), img_width=ROWS, img_height=COLS))
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Skipped-Files"] == "3"
    items = response.get_json()
    assert _names(items) == [f"orcasoundlab_{1594154118 + 3 * i}" for i in range(3)]
    for name in ("1594154200", "1594154300", "1594154400"):
        assert any(name in record.getMessage() for record in caplog.records), name
    from scoring.torch_scoring import predict

    expected = predict(str(model), GOOD, ROWS, COLS, device="cpu")
    assert len(items) == len(expected) == 3 and max(expected) - min(expected) >= 0.2
    assert max(abs(i["predicted_value"] - e) for i, e in zip(items, expected)) <= 1e-4

    # the same use case without HTTP: the same items, given the URL the test client reached the service at
    work = runtime(cache_dir, MAX_PIXELS=500_000, LOCAL_ROOT=str(tmp_path / "data"))
    params = dataclasses.replace(_params(str(model), str(unlabeled)), service_url="http://localhost")
    result = work.run_predict(work, params)
    assert items[0]["audio_url"].startswith("http://localhost/clips/")
    assert result == items and len(result.skipped) == 3
    assert all(s["url"].startswith(str(unlabeled)) and s["reason"] for s in result.skipped)
    assert "more than the limit" in result.skipped[-1]["reason"]


def test_predict_decodes_clips_while_the_model_is_being_loaded(tmp_path, model_h5, cache_dir):
    """A model seen for the first time is exported (ONNX) or loaded (torch) while the stream already
    decodes the first clips: here the model is not handed over until a clip has been decoded."""
    import threading

    unlabeled = _local_unlabeled(tmp_path / "data")
    model = tmp_path / "data" / "srkw_cnn_0.h5"
    model.write_bytes(Path(model_h5).read_bytes())
    work = runtime(cache_dir, LOCAL_ROOT=str(tmp_path / "data"), MAX_PIXELS=500_000)
    decoded = threading.Event()
    real_put, real_get = work.pixels.put, work.scorers.get

    def put(*args, **kwargs):
        decoded.set()
        return real_put(*args, **kwargs)

    def get(path):
        assert decoded.wait(timeout=20), "no clip was decoded while the model was being loaded"
        return real_get(path)

    work.pixels.put, work.scorers.get = put, get
    items = work.run_predict(work, _params(str(model), str(unlabeled)))
    assert _names(items) == [f"orcasoundlab_{1594154118 + 3 * i}" for i in range(3)] and len(items.skipped) == 3


def test_cpu_predict_service_never_imports_torch(tmp_path, model_h5, cache_dir):
    """The service process scores with ONNX Runtime; the one-off ONNX export runs in a child process."""
    unlabeled = _local_unlabeled(tmp_path / "data")
    code = f"""
import json, sys
from service import create_app
app = create_app({{"LOCAL_ROOT": "/", "DEVICE": None, "CACHE_DIR": {str(cache_dir)!r}}})
r = app.test_client().get("/predict", query_string=dict(model_url={str(model_h5)!r},
    unlabeled_url={str(unlabeled)!r}, img_width={ROWS}, img_height={COLS}))
print(json.dumps([r.status_code, r.headers.get("X-Skipped-Files"), len(r.get_json()), "torch" in sys.modules]))
"""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [200, "2", 4, False]  # default ORCA_MAX_PIXELS: the 1000x600 image is scored
    assert len(list((cache_dir / "onnx").glob("*.onnx"))) == 1


# ------------------------------------------------------------------------------- /predict, S3 mirror

@pytest.fixture
def s3(aws_env, cache_dir):
    from moto import mock_aws

    with mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="orcaperf")
        yield client


@pytest.fixture
def downloads() -> list:
    """The keys the runtime's S3 client gets (GetObject), in order: see `s3_runtime`."""
    return []


def s3_runtime(cache_dir, downloads: list) -> Runtime:
    """An S3-only runtime whose client records the key of every GetObject in `downloads`."""
    def record(params, **kwargs):
        downloads.append(params["Key"])

    connector = S3Connector(on_client=lambda client: client.meta.events.register(
        "provide-client-params.s3.GetObject", record))
    return Runtime.from_config({"LOCAL_ROOT": "", "DEVICE": "cpu", "CACHE_DIR": str(cache_dir), "ONNX_CACHE": None},
                               s3=connector)


@pytest.mark.slow  # ~4 s
def test_s3_mirror_downloads_only_new_or_changed_objects_and_follows_deletions(s3, model_h5, cache_dir,
                                                                                 downloads):
    s3.upload_file(str(model_h5), "orcaperf", "models/srkw_cnn_0.h5")
    keys = [f"unlabeled/spectrograms/orcasoundlab_{1594154118 + 3 * i}.png" for i in range(3)]
    for key, png in zip(keys, GOOD):
        s3.upload_file(str(png), "orcaperf", key)
    s3.put_object(Bucket="orcaperf", Key="unlabeled/spectrograms/orcasoundlab_1594154999.png", Body=b"junk")
    params = _params("s3://orcaperf/models/srkw_cnn_0.h5", "s3://orcaperf/unlabeled/")
    work = s3_runtime(cache_dir, downloads)

    cold = work.run_predict(work, params)
    assert len(cold) == 3 and len(cold.skipped) == 1 and len(downloads) == 5  # model + 4 spectrograms
    mirror = next(p for p in (cache_dir / "mirrors").iterdir() if p.is_dir())
    assert sorted(p.name for p in mirror.glob("*.png")) == sorted(k.rsplit("/", 1)[1] for k in keys) + [
        "orcasoundlab_1594154999.png"]

    downloads.clear()
    warm = work.run_predict(work, params)
    assert warm == cold and downloads == []  # nothing changed: list only

    s3.delete_object(Bucket="orcaperf", Key=keys[1])  # the client labels a clip: it leaves unlabeled/
    changed = sorted(SAMPLE.glob("test/*/*.png"))[4]  # bytes never seen: a new ETag, not in the pixel cache
    s3.upload_file(str(changed), "orcaperf", keys[2])  # a changed object
    after = work.run_predict(work, params)
    assert downloads == [keys[2]]
    assert _names(after) == ["orcasoundlab_1594154118", "orcasoundlab_1594154124"]
    local = cache_dir / "local" / "unlabeled"
    (local / "spectrograms").mkdir(parents=True)
    (local / "spectrograms" / "orcasoundlab_1594154124.png").write_bytes(changed.read_bytes())
    fresh = Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(cache_dir / "fresh")})
    expected = fresh.run_predict(fresh, _params(str(model_h5), str(local)))  # the new bytes, scored afresh
    assert after[1]["predicted_value"] == pytest.approx(expected[0]["predicted_value"], abs=1e-6)

    downloads.clear()
    s3.upload_file(str(GOOD[1]), "orcaperf", keys[2])  # back to bytes scored before: their pixels are cached
    again = work.run_predict(work, params)
    assert downloads == [] and again[1]["predicted_value"] == pytest.approx(cold[1]["predicted_value"], abs=1e-6)
    assert not (mirror / keys[1].rsplit("/", 1)[1]).exists()
    index = json.loads((mirror / "index.json").read_text())
    assert sorted(index) == ["orcasoundlab_1594154118.png", "orcasoundlab_1594154124.png",
                             "orcasoundlab_1594154999.png"]

    downloads.clear()
    s3.upload_file(str(model_h5), "orcaperf", "models/srkw_cnn_0.h5")  # same bytes → same ETag: cached
    work.run_predict(work, params)
    assert downloads == []


# ------------------------------------------------------------------------------- /train, labeled mirror

def test_labeled_mirror_downloads_only_new_labels_follows_deletions_and_links_a_full_dataset(
        s3, cache_dir, tmp_path, downloads):
    from service.train import fetch_labeled, mirror_name

    work = s3_runtime(cache_dir, downloads)
    sources = sorted(SAMPLE.glob("train/*/*.png"))[:2] + sorted(SAMPLE.glob("validation/*/*.png"))[:2]
    keys = ["labeled/train/calls/a.png", "labeled/train/nocalls/b.png",
            "labeled/validation/calls/c.png", "labeled/validation/nocalls/d.png"]
    for key, png in zip(keys, sources):
        s3.upload_file(str(png), "orcaperf", key)
    s3.put_object(Bucket="orcaperf", Key="labeled/mp3/calls/a.mp3", Body=b"ID3")  # not an image: ignored
    labeled = work.locate("s3://orcaperf/labeled/", "labeled_url")

    def fetch_round(name):
        folder = tmp_path / name
        counts = fetch_labeled(work, labeled, str(folder))
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        return counts, files, folder

    counts, files, first = fetch_round("round1")
    assert counts == {"train": 2, "validation": 2} and sorted(downloads) == sorted(keys)
    assert files == ["train/calls/a.png", "train/nocalls/b.png", "validation/calls/c.png",
                     "validation/nocalls/d.png"]
    assert (first / "train/calls/a.png").read_bytes() == sources[0].read_bytes()

    downloads.clear()
    _, files_again, _ = fetch_round("round2")
    assert downloads == [] and files_again == files  # nothing changed: the listing only

    # the next round: a new label, one label moved to the other class (old key deleted), one image replaced
    s3.upload_file(str(sources[2]), "orcaperf", "labeled/train/calls/e.png")
    s3.delete_object(Bucket="orcaperf", Key=keys[1])
    s3.upload_file(str(sources[1]), "orcaperf", "labeled/train/calls/b.png")
    s3.upload_file(str(sources[3]), "orcaperf", keys[0])
    downloads.clear()
    counts, files, third = fetch_round("round3")
    assert sorted(downloads) == ["labeled/train/calls/a.png", "labeled/train/calls/b.png",
                                 "labeled/train/calls/e.png"]
    assert files == ["train/calls/a.png", "train/calls/b.png", "train/calls/e.png", "validation/calls/c.png",
                     "validation/nocalls/d.png"]
    assert (third / "train/calls/a.png").read_bytes() == sources[3].read_bytes()
    assert (first / "train/calls/a.png").read_bytes() == sources[0].read_bytes()  # an earlier run's copy is intact
    mirror_files = {p.name for d in (cache_dir / "mirrors").iterdir() if d.is_dir() for p in d.iterdir()}
    assert mirror_name("train/nocalls/b.png") not in mirror_files  # the deletion was followed
    assert mirror_name("train/calls/e.png") in mirror_files


def test_torch_scoring_branch_decodes_with_torchvision_and_answers_like_onnx_runtime(tmp_path, model_h5, srkw_h5,
                                                                                    cache_dir, monkeypatch):
    """The branch /predict takes on CUDA, run on the CPU: torch scoring, torchvision decoding (even where
    the pixel cache holds PIL's pixels of the same clips), same skips, scores within 1e-4."""
    import re

    import scoring.torch_decode
    from scoring.scorers import Scorers

    unlabeled = _local_unlabeled(tmp_path / "data")
    params = _params(str(model_h5), str(unlabeled))
    onnx_runtime = runtime(cache_dir, MAX_PIXELS=500_000)
    onnx = onnx_runtime.run_predict(onnx_runtime, params)

    decoded = []
    real_decode = scoring.torch_decode.decode_png_torch
    monkeypatch.setattr(scoring.torch_decode, "decode_png_torch",
                        lambda source, rows, cols: decoded.append(source) or real_decode(source, rows, cols))
    torch_runtime = Runtime.from_config(  # the same cache folder: the ONNX run's PIL pixels are there
        {"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(cache_dir), "MAX_PIXELS": 500_000},
        scorers=Scorers(cache_dir / "onnx", device="cpu", backend="torch"))
    torch_path = torch_runtime.run_predict(torch_runtime, params)
    assert len(decoded) == 5  # three spectrograms and two unreadable ones (the oversized is refused before)
    assert _names(torch_path) == _names(onnx)
    torch_runtime.run_predict(torch_runtime, _params(srkw_h5, str(unlabeled)))  # a new model: no cached scores
    assert len(decoded) == 5 + 2  # torchvision's own pixels of the three came from the cache

    def same_words(skipped):  # PIL's messages name an object address that differs per call
        return [(item["url"], re.sub(r" at 0x[0-9a-f]+", "", item["reason"])) for item in skipped]

    assert same_words(torch_path.skipped) == same_words(onnx.skipped) and len(onnx.skipped) == 3
    values = [item["predicted_value"] for item in onnx]
    assert len(torch_path) == len(onnx) == 3 and max(values) - min(values) >= 0.2
    assert max(abs(a["predicted_value"] - b["predicted_value"]) for a, b in zip(torch_path, onnx)) <= 1e-4
