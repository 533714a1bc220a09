"""/health, /ready and /metrics (parsed with prometheus_client's own text parser), and the PNGs
(training curves, benchmark chart)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws
from prometheus_client.parser import text_string_to_metric_families

from service import __version__, create_app
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]

METRIC_TYPES = {"orca_http_requests_total": "counter", "orca_http_request_duration_seconds": "histogram",
                "orca_images_scored_total": "counter", "orca_skipped_files_total": "counter",
                "orca_training_duration_seconds": "histogram", "orca_trainings_total": "counter",
                "orca_models_written_total": "counter", "orca_queue_length": "gauge",
                "orca_jobs_running": "gauge", "orca_build_info": "gauge",
                "orca_pixel_cache_unwritten_total": "counter"}


def parse(text: str) -> dict:
    """{exposed name: family}; a counter is found under its `_total` name too (the parser strips it)."""
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        if family.type == "counter":
            families[family.name + "_total"] = family
    return families


def value(families: dict, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    return sum(s.value for f in {id(f): f for f in families.values()}.values() for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_health_names_version_and_device():
    body = create_app({"LOCAL_ROOT": "", "DEVICE": "cpu"}).test_client().get("/health").get_json()
    assert body == {"status": "ok", "version": __version__, "device": "cpu"}


def test_ready_checks_the_local_root(tmp_path):
    assert create_app({"LOCAL_ROOT": str(tmp_path)}).test_client().get("/ready").status_code == 200
    response = create_app({"LOCAL_ROOT": str(tmp_path / "gone")}).test_client().get("/ready")
    assert response.status_code == 503 and "does not exist" in response.get_json()["error"]


def test_ready_checks_the_configured_bucket(aws_env):
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="orca")
        ok = create_app({"LOCAL_ROOT": "", "READY_BUCKET": "orca"}).test_client().get("/ready")
        assert ok.status_code == 200 and ok.get_json()["checks"] == {"s3": "ok", "state_dir": "ok"}
        missing = create_app({"LOCAL_ROOT": "", "READY_BUCKET": "nope"}).test_client().get("/ready")
        assert missing.status_code == 503 and missing.get_json()["status"] == "unavailable"
        s3_only = create_app({"LOCAL_ROOT": ""}).test_client().get("/ready")  # list_buckets
        assert s3_only.status_code == 200


def test_metrics_text_format_counts_requests_latency_images_and_queue():
    """The app owns a `Metrics` at `app.extensions["orca"].metrics`."""
    class Items(list):  # what run_predict answers: the items, plus the files it skipped
        skipped = [{"url": "a", "reason": "corrupt"}, {"url": "b", "reason": "too large"}]

    app = create_app({"LOCAL_ROOT": ""}, run_predict=lambda *args, **kwargs: Items([{"predicted_value": 0.5}] * 3))
    other = create_app({"LOCAL_ROOT": ""})
    app_metrics = app.extensions["orca"].metrics
    assert isinstance(app_metrics, Metrics) and other.extensions["orca"].metrics is not app_metrics
    client = app.test_client()
    before = parse(client.get("/metrics").get_data(as_text=True))
    query = "model_url=s3://b/m_0.h5&unlabeled_url=s3://b/u/&img_width=3&img_height=3"
    assert client.get(f"/predict?{query}").status_code == 200
    assert client.get("/predict").status_code == 400
    assert client.get("/no/such/route").status_code == 404
    app_metrics.count_skipped(2)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = parse(response.get_data(as_text=True))
    for name, kind in METRIC_TYPES.items():
        assert after[name].type == kind and after[name].documentation

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("orca_http_requests_total", endpoint="/predict", status="200", method="GET") == 1
    assert delta("orca_http_requests_total", endpoint="/predict", status="400") == 1
    assert delta("orca_http_requests_total", endpoint="unmatched", status="404") == 1
    assert delta("orca_http_request_duration_seconds_count", endpoint="/predict") == 2
    assert delta("orca_images_scored_total") == 3
    assert delta("orca_skipped_files_total", stage="predict") == 4  # X-Skipped-Files + count_skipped
    assert value(after, "orca_build_info", version=__version__) == 1
    # histogram buckets are cumulative and end in +Inf == count
    buckets = [(s.labels["le"], s.value) for s in after["orca_http_request_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["endpoint"] == "/predict"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == "+Inf"
    assert buckets[-1][1] == value(after, "orca_http_request_duration_seconds_count", endpoint="/predict")
    # the other app saw none of it
    untouched = parse(other.test_client().get("/metrics").get_data(as_text=True))
    assert value(untouched, "orca_images_scored_total") == 0
    assert value(untouched, "orca_http_requests_total", endpoint="/predict") == 0


def _exercise(m: Metrics, n: int = 1) -> None:
    """Put a value into every metric of `m` (n times)."""
    for _ in range(n):
        m.requests.labels(endpoint="/predict", method="GET", status="200").inc()
        m.latency.labels(endpoint="/predict").observe(0.2)
        m.count_scored(3)
        m.count_skipped(2, stage="train")
        m.training_duration.labels(outcome="succeeded").observe(42)
        m.trainings.labels(outcome="succeeded").inc()
        m.models_written.inc()
        m.jobs_running.inc()
    m.queue_length.set(5)


def test_two_metrics_objects_do_not_share_values():
    a, b = Metrics("1.0"), Metrics("2.0")
    assert a.registry is not b.registry
    _exercise(a, 2)
    a.count_skipped(0)  # nothing: no series for stage=predict
    mine, theirs = parse(a.render()[0].decode()), parse(b.render()[0].decode())
    assert value(mine, "orca_http_requests_total", endpoint="/predict", method="GET", status="200") == 2
    assert value(mine, "orca_http_request_duration_seconds_count", endpoint="/predict") == 2
    assert value(mine, "orca_images_scored_total") == 6
    assert value(mine, "orca_skipped_files_total", stage="train") == 4
    assert not [s for s in mine["orca_skipped_files_total"].samples if s.labels.get("stage") == "predict"]
    assert value(mine, "orca_training_duration_seconds_sum", outcome="succeeded") == 84
    assert value(mine, "orca_trainings_total", outcome="succeeded") == 2
    assert value(mine, "orca_models_written_total") == 2
    assert value(mine, "orca_queue_length") == 5 and value(mine, "orca_jobs_running") == 2
    for name in ("orca_http_requests_total", "orca_http_request_duration_seconds_count", "orca_images_scored_total",
                 "orca_skipped_files_total", "orca_trainings_total", "orca_models_written_total",
                 "orca_queue_length", "orca_jobs_running"):
        assert value(theirs, name) == 0, name
    assert value(mine, "orca_build_info", version="1.0") == 1 and value(mine, "orca_build_info", version="2.0") == 0
    assert value(theirs, "orca_build_info", version="2.0") == 1 and value(theirs, "orca_build_info", version="1.0") == 0


def test_render_has_every_metric_with_its_type_labels_and_buckets():
    from service.metrics import LATENCY_BUCKETS, TRAINING_BUCKETS

    m = Metrics("1.0")
    _exercise(m)
    body, content_type = m.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    families = parse(text)
    for name, kind in METRIC_TYPES.items():
        assert f"# TYPE {name} {kind}\n" in text, name  # the exposed name dashboards query
        assert families[name].type == kind and families[name].documentation, name
    labels = {"orca_http_requests_total": {"endpoint", "method", "status"},
              "orca_http_request_duration_seconds_count": {"endpoint"}, "orca_images_scored_total": set(),
              "orca_skipped_files_total": {"stage"}, "orca_training_duration_seconds_count": {"outcome"},
              "orca_trainings_total": {"outcome"}, "orca_models_written_total": set(), "orca_queue_length": set(),
              "orca_jobs_running": set(), "orca_build_info": {"version"}}
    for sample_name, names in labels.items():
        samples = [s for f in families.values() for s in f.samples if s.name == sample_name]
        assert samples and all(set(s.labels) == names for s in samples), sample_name

    def bounds(name, **labels):
        return [float(s.labels["le"]) for s in families[name].samples
                if s.name == name + "_bucket" and all(s.labels[k] == v for k, v in labels.items())]

    assert bounds("orca_http_request_duration_seconds") == [*map(float, LATENCY_BUCKETS), float("inf")]
    assert LATENCY_BUCKETS[0] == 0.005 and LATENCY_BUCKETS[-1] == 600
    assert bounds("orca_training_duration_seconds") == [*map(float, TRAINING_BUCKETS), float("inf")]
    assert value(families, "orca_training_duration_seconds_bucket", le="30.0") == 0
    assert value(families, "orca_training_duration_seconds_bucket", le="60.0") == 1


def test_render_has_process_platform_and_gc_families():
    families = parse(Metrics("1.0").render()[0].decode())
    assert families["python_info"].type == "gauge"
    if sys.platform.startswith("linux"):  # ProcessCollector reads /proc
        assert value(families, "process_resident_memory_bytes") > 0
        assert families["process_cpu_seconds_total"].type == "counter"
    if sys.implementation.name == "cpython":
        assert any(name.startswith("python_gc_") for name in families)
        assert families["python_gc_collections_total"].type == "counter"


WRITER = """
import json, os
from service.metrics import Metrics
m = Metrics("9.9")
m.requests.labels(endpoint="/predict", method="GET", status="200").inc({n})
m.latency.labels(endpoint="/predict").observe(0.1)
m.count_scored({n})
m.count_skipped(1, stage="train")
m.queue_length.set({n})
print(json.dumps({{"pid": os.getpid()}}))
"""

READER = """
import sys
from prometheus_client import multiprocess
from service.metrics import Metrics
multiprocess.mark_process_dead(int(sys.argv[1]))  # what gunicorn's child_exit hook does
body, content_type = Metrics("9.9").render()
sys.stdout.write(body.decode())
"""


def test_multiprocess_mode_renders_all_workers(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env.pop("prometheus_multiproc_dir", None)

    def python(code, *args):
        done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = json.loads(python(WRITER.format(n=3)))["pid"]
    python(WRITER.format(n=4))
    assert list(tmp_path.glob("*.db"))
    families = parse(python(READER, first))  # the first worker has exited
    assert value(families, "orca_http_requests_total", endpoint="/predict", method="GET", status="200") == 7
    assert value(families, "orca_http_request_duration_seconds_count", endpoint="/predict") == 2
    assert value(families, "orca_images_scored_total") == 7
    assert value(families, "orca_skipped_files_total", stage="train") == 2
    assert value(families, "orca_queue_length") == 4  # live workers only: the dead one's 3 is gone
    assert value(families, "orca_build_info", version="9.9") == 1
    assert families["orca_http_requests_total"].type == "counter"


# ------------------------------------------------------------------------------------- the PNGs

def _curves(loss, acc, val_loss, val_acc):
    return SimpleNamespace(loss=loss, acc=acc, val_loss=val_loss, val_acc=val_acc)


def _png(data: bytes):
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert 600 <= image.width <= 2000 and 300 <= image.height <= 1200, image.size
    return image.convert("RGB")


def _has_color(image, rgb, tolerance=12) -> bool:
    return any(all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb))
               for _, pixel in image.getcolors(maxcolors=1 << 20))


nan, inf = float("nan"), float("inf")


@pytest.mark.parametrize("curves", [
    _curves([0.7], [0.55], [0.69], [0.6]),
    _curves([0.9, 0.7, 0.6, 0.5, 0.45, 0.4, 0.38], [0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.85],
            [0.8, 0.72, 0.65, 0.66, 0.6, 0.61, 0.62], [0.55, 0.6, 0.66, 0.68, 0.7, 0.69, 0.7]),
    _curves([0.7, nan, 0.5], [0.5, 0.6, nan], [nan, inf, 0.6], [0.5, nan, 0.7]),
    _curves([nan], [nan], [nan], [nan]),
    _curves([], [], [], []),
], ids=["1-epoch", "7-epochs", "nan-and-inf", "all-nan", "no-epochs"])
def test_curves_png_is_a_png_of_sensible_size(curves):
    from service.provenance import curves_png

    image = _png(curves_png(curves, title="srkw_cnn_2.h5 (from srkw_cnn_1.h5)"))
    finite = any(v == v and abs(v) != inf for v in curves.loss + curves.acc)
    if finite:
        assert _has_color(image, (31, 119, 180))  # the training line


@pytest.mark.slow  # ~5 s
def test_curves_png_is_lazy_thread_safe_and_draws_no_pyplot():
    from concurrent.futures import ThreadPoolExecutor

    code = ("import sys\nfrom service import provenance, create_app\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported with the service'\n"
            "from types import SimpleNamespace as R\n"
            "provenance.curves_png(R(loss=[1, .5], acc=[.5, .7], val_loss=[1, .6], val_acc=[.4, .6]), 't')\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    from service.provenance import curves_png

    curves = _curves([0.9, 0.7, 0.6], [0.5, 0.6, 0.7], [0.8, 0.7, 0.75], [0.55, 0.6, 0.62])
    alone = curves_png(curves, "same")
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: curves_png(curves, "same"), range(8)))
    assert all(png == alone for png in together)


@pytest.mark.parametrize("series, notes", [
    ({"reference": [12.5, 30.1, 2.25], "ours": [48.0, 120.7, 3.5]},
     ["speed-up (ours / reference): predict_cold 3.84x, predict_warm 4.01x, train 1.56x",
      "peak RSS: reference 2400 MiB, service 1900 MiB", "2 CPU cores, ORCA_DEVICE=auto, cuda available: False"]),
    ({"ours": [48.0, 120.7, 3.5]}, None),
], ids=["two-series-with-notes", "one-series"])
def test_bar_chart_writes_a_png(tmp_path, series, notes):
    from bench.chart import bar_chart

    path = tmp_path / "chart.png"
    out = bar_chart(path, ["predict_cold", "predict_warm", "train"], series,
                    title="orca ML endpoint: 200 unlabeled, 40 train images x 2 epochs, 607x617",
                    unit="images / s", notes=notes)
    assert out == str(path)
    image = _png(path.read_bytes())
    assert _has_color(image, (31, 119, 180))  # the "ours" bars
