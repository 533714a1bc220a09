"""Prometheus metrics in the text exposition format 0.0.4, without a client library.

One process-wide registry (`REGISTRY`), thread-safe (one lock). `GET /metrics` renders it. What is
measured:

| metric | type | labels | meaning |
|--------|------|--------|---------|
| `orca_http_requests_total` | counter | endpoint, method, status | requests answered |
| `orca_http_request_duration_seconds` | histogram | endpoint | request latency |
| `orca_images_scored_total` | counter | | spectrograms scored by /predict |
| `orca_skipped_files_total` | counter | stage | files skipped (corrupt or oversized images): stage=predict or train |
| `orca_training_duration_seconds` | histogram | outcome | wall time of training jobs (queue wait excluded) |
| `orca_trainings_total` | counter | outcome | finished training jobs: succeeded / failed |
| `orca_models_written_total` | counter | | model versions written |
| `orca_queue_length` | gauge | | training jobs waiting |
| `orca_jobs_running` | gauge | | training jobs running (0 or 1) |
| `orca_build_info` | gauge | version | always 1 |

`count_skipped(n)` and `count_scored(n)` are the hooks for the scoring code.
"""

from __future__ import annotations

import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TRAINING_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, registry: "Registry", name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.registry, self.name, self.help, self.label_names = registry, name, help_text, tuple(labels)
        self.values: dict[tuple, object] = {}
        registry.metrics.append(self)

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1, **labels) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self.registry.lock:
            self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels) -> float:
        with self.registry.lock:
            return self.values.get(self._key(labels), 0)

    def lines(self) -> list[str]:
        if not self.values and not self.label_names:
            return [f"{self.name} 0"]
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self.registry.lock:
            self.values[key] = value

    def inc(self, amount: float = 1, **labels) -> None:
        key = self._key(labels)
        with self.registry.lock:
            self.values[key] = self.values.get(key, 0) + amount


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, registry, name, help_text, labels=(), buckets=LATENCY_BUCKETS):
        super().__init__(registry, name, help_text, labels)
        self.buckets = tuple(sorted(buckets))

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self.registry.lock:
            counts, total, count = self.values.get(key, ([0] * len(self.buckets), 0.0, 0))
            counts = [n + (value <= bound) for n, bound in zip(counts, self.buckets)]
            self.values[key] = (counts, total + value, count + 1)

    def count(self, **labels) -> int:
        with self.registry.lock:
            entry = self.values.get(self._key(labels))
            return entry[2] if entry else 0

    def lines(self) -> list[str]:
        out = []
        for key, (counts, total, count) in sorted(self.values.items()):
            for bound, n in zip(self.buckets, counts):
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, f'le={chr(34)}{_number(bound)}{chr(34)}')} {n}")
            out.append(f"{self.name}_bucket{_labels(self.label_names, key, 'le=' + chr(34) + '+Inf' + chr(34))} {count}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {count}")
        return out


class Registry:
    def __init__(self):
        self.lock = threading.RLock()
        self.metrics: list[_Metric] = []

    def render(self) -> str:
        with self.lock:
            lines = []
            for metric in self.metrics:
                lines.extend(metric.header())
                lines.extend(metric.lines())
            return "\n".join(lines) + "\n"


REGISTRY = Registry()
REQUESTS = Counter(REGISTRY, "orca_http_requests_total", "HTTP requests answered, by endpoint, method and status.",
                   ("endpoint", "method", "status"))
LATENCY = Histogram(REGISTRY, "orca_http_request_duration_seconds", "HTTP request latency in seconds, by endpoint.",
                    ("endpoint",))
IMAGES_SCORED = Counter(REGISTRY, "orca_images_scored_total", "Spectrograms scored by /predict.")
SKIPPED = Counter(REGISTRY, "orca_skipped_files_total",
                  "Files skipped as corrupt or oversized, by stage (predict, train).", ("stage",))
TRAINING_DURATION = Histogram(REGISTRY, "orca_training_duration_seconds",
                              "Wall time of training jobs in seconds (queue wait excluded), by outcome.",
                              ("outcome",), buckets=TRAINING_BUCKETS)
TRAININGS = Counter(REGISTRY, "orca_trainings_total", "Finished training jobs, by outcome.", ("outcome",))
MODELS_WRITTEN = Counter(REGISTRY, "orca_models_written_total", "Model versions written.")
QUEUE_LENGTH = Gauge(REGISTRY, "orca_queue_length", "Training jobs waiting for the device.")
JOBS_RUNNING = Gauge(REGISTRY, "orca_jobs_running", "Training jobs running.")
BUILD_INFO = Gauge(REGISTRY, "orca_build_info", "Always 1; the service version as a label.", ("version",))


def count_skipped(n: int = 1, stage: str = "predict") -> None:
    """Count `n` files skipped (corrupt or oversized images) by `stage` ("predict" or "train")."""
    if n:
        SKIPPED.inc(n, stage=stage)


def count_scored(n: int) -> None:
    if n:
        IMAGES_SCORED.inc(n)


def render() -> str:
    return REGISTRY.render()
