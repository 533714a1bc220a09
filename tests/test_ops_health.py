"""/health, /ready and /metrics (Prometheus text format 0.0.4, parsed here)."""

from __future__ import annotations

import re
import threading

import boto3
import pytest
from moto import mock_aws

from service import __version__, create_app, jobs, metrics

SAMPLE_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict:
    """{name: {"type", "help", "samples": [(name, labels, value)]}} — fails on any malformed line."""
    assert text.endswith("\n")
    families, current = {}, None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            current = families.setdefault(name, {"samples": []})
            current["help"] = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            families.setdefault(name, {"samples": []})["type"] = kind
        else:
            match = SAMPLE_LINE.match(line)
            assert match, f"malformed sample line: {line!r}"
            name, labels, value = match[1], dict(LABEL.findall(match[3] or "")), float(match[4])
            family = next(f for f in families if name == f or name.startswith(f + "_"))
            families[family]["samples"].append((name, labels, value))
    return families


def value(families, name, **labels):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    family = families.get(name) or families[base]
    return sum(v for n, lab, v in family["samples"] if n == name and all(lab.get(k) == x for k, x in labels.items()))


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
        assert ok.status_code == 200 and ok.get_json()["checks"] == {"s3": "ok"}
        missing = create_app({"LOCAL_ROOT": "", "READY_BUCKET": "nope"}).test_client().get("/ready")
        assert missing.status_code == 503 and missing.get_json()["status"] == "unavailable"
        s3_only = create_app({"LOCAL_ROOT": ""}).test_client().get("/ready")  # list_buckets
        assert s3_only.status_code == 200


def test_metrics_text_format_counts_requests_latency_images_and_queue(monkeypatch):
    class Items(list):  # what run_predict answers: the items, plus the files it skipped
        skipped = [{"url": "a", "reason": "corrupt"}, {"url": "b", "reason": "too large"}]

    monkeypatch.setattr(jobs, "run_predict", lambda params, settings: Items([{"predicted_value": 0.5}] * 3))
    client = create_app({"LOCAL_ROOT": ""}).test_client()
    before = parse(client.get("/metrics").get_data(as_text=True))
    query = "model_url=s3://b/m_0.h5&unlabeled_url=s3://b/u/&img_width=3&img_height=3"
    assert client.get(f"/predict?{query}").status_code == 200
    assert client.get("/predict").status_code == 400
    assert client.get("/no/such/route").status_code == 404
    metrics.count_skipped(2)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = parse(response.get_data(as_text=True))
    for name, kind in {"orca_http_requests_total": "counter", "orca_http_request_duration_seconds": "histogram",
                       "orca_images_scored_total": "counter", "orca_skipped_files_total": "counter",
                       "orca_training_duration_seconds": "histogram", "orca_queue_length": "gauge",
                       "orca_jobs_running": "gauge", "orca_build_info": "gauge"}.items():
        assert after[name]["type"] == kind and after[name]["help"]

    def delta(name, **labels):
        return value(after, name, **labels) - (value(before, name, **labels) if name in before or
                                              re.sub(r"_(bucket|sum|count)$", "", name) in before else 0)

    assert delta("orca_http_requests_total", endpoint="/predict", status="200", method="GET") == 1
    assert delta("orca_http_requests_total", endpoint="/predict", status="400") == 1
    assert delta("orca_http_requests_total", endpoint="unmatched", status="404") == 1
    assert delta("orca_http_request_duration_seconds_count", endpoint="/predict") == 2
    assert delta("orca_images_scored_total") == 3
    assert delta("orca_skipped_files_total", stage="predict") == 4  # X-Skipped-Files + count_skipped
    assert value(after, "orca_build_info", version=__version__) == 1
    # histogram buckets are cumulative and end in +Inf == count
    buckets = [(lab["le"], v) for n, lab, v in after["orca_http_request_duration_seconds"]["samples"]
               if n.endswith("_bucket") and lab["endpoint"] == "/predict"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == "+Inf"
    assert buckets[-1][1] == value(after, "orca_http_request_duration_seconds_count", endpoint="/predict")


def test_metrics_are_thread_safe():
    counter = metrics.Counter(metrics.Registry(), "t_total", "test")
    hist = metrics.Histogram(counter.registry, "t_seconds", "test", buckets=(1,))

    def work():
        for _ in range(2000):
            counter.inc()
            hist.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.get() == 16000 and hist.count() == 16000
    text = counter.registry.render()
    assert 't_seconds_bucket{le="1"} 16000' in text and "t_total 16000" in text


def test_label_values_are_escaped():
    registry = metrics.Registry()
    counter = metrics.Counter(registry, "x_total", "test", ("path",))
    counter.inc(path='a"b\\c\nd')
    assert 'x_total{path="a\\"b\\\\c\\nd"} 1' in registry.render()
    with pytest.raises(ValueError):
        counter.inc(-1, path="a")
