"""Prometheus metrics of one Flask app, on `prometheus_client`.

`Metrics` holds everything: its own `CollectorRegistry` (with prometheus_client's process, platform
and GC collectors) and the service's metrics on it. The app owns one (`app.extensions["orca"].metrics`);
there is no module-level metric state, so two apps in one process (tests) never share values.
`GET /metrics` answers `Metrics.render()`: prometheus_client's `generate_latest`, the text format 0.0.4
(`text/plain; version=0.0.4; charset=utf-8`).

| metric | type | labels | meaning |
|--------|------|--------|---------|
| `orca_http_requests_total` | counter | endpoint, method, status | requests answered (endpoint: route, `unmatched`) |
| `orca_http_request_duration_seconds` | histogram | endpoint | request latency (5 ms … 600 s buckets) |
| `orca_images_scored_total` | counter | | spectrograms scored by /predict |
| `orca_skipped_files_total` | counter | stage | corrupt or oversized images skipped: stage=predict or train |
| `orca_training_duration_seconds` | histogram | outcome | training wall time, queue wait excluded (1 s … 4 h buckets) |
| `orca_trainings_total` | counter | outcome | finished training jobs: succeeded / failed |
| `orca_models_written_total` | counter | | model versions written |
| `orca_queue_length` | gauge | | training jobs waiting |
| `orca_jobs_running` | gauge | | training jobs running (0 or 1 per process) |
| `orca_pixel_cache_lookups_total` | counter | result, tier | decoded-pixel cache lookups: hit (tier disk/device) or miss (tier none) |
| `orca_pixel_decodes_total` | counter | | images decoded (or spectrograms drawn from audio) into the pixel cache |
| `orca_spectrograms_rendered_total` | counter | | spectrograms drawn from audio clips (scoring/clips.py: /predict, /train, /query, /embed) |
| `orca_pixel_cache_evictions_total` | counter | tier | pixel cache entries evicted, least recently used first |
| `orca_pixel_cache_bytes` | gauge | tier | bytes of decoded pixels held (disk at the last scan, device in this process) |
| `orca_pixel_cache_unwritten_total` | counter | | decoded images not written to the disk tier: ORCA_PIXEL_CACHE_MIN_FREE, or the write failed |
| `orca_build_info` | gauge | version | always 1 |
| `process_*` | | | CPU seconds, memory, open fds, start time (ProcessCollector; Linux only) |
| `python_gc_*`, `python_info` | | | garbage collector counts, Python version (GCCollector, PlatformCollector) |

prometheus_client also exposes a `*_created` gauge (creation timestamp) beside every counter and
histogram series, as it does by default.

`count_skipped(n, stage)` and `count_scored(n)` are the hooks for the scoring and training code.

Several gunicorn workers (multiprocess mode). By default the metrics live in the process that
serves the request, so with `--workers N` (N > 1) each scrape would see one worker only. To
report all workers together, point the environment variable `PROMETHEUS_MULTIPROC_DIR` at an
empty folder writable by the workers, in gunicorn's environment so it is set before any worker
imports prometheus_client (e.g. `rm -rf /tmp/orca-metrics && mkdir /tmp/orca-metrics &&
PROMETHEUS_MULTIPROC_DIR=/tmp/orca-metrics gunicorn -c gunicorn.conf.py --workers 4 ...`: empty it
before every start of gunicorn, never while it runs), and tell prometheus_client when a worker exits,
in the gunicorn config file:

    from prometheus_client import multiprocess

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)

Each worker then writes its values to memory-mapped files in that folder and `render()` collects
them all with `prometheus_client.multiprocess.MultiProcessCollector` on a fresh registry: counters
and histograms are summed over all workers (dead ones included), `orca_queue_length` and
`orca_jobs_running` are summed over live workers, `orca_build_info` is the maximum. In this mode
the per-process `process_*`, `python_gc_*` and `python_info` families are not exported, and all `Metrics` objects
of one process write to the same files (one app per worker, as gunicorn runs it). Only the metrics
are shared: jobs and the training queue still live in the worker that accepted them.
"""

from __future__ import annotations

import os

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, exposition, generate_latest, multiprocess)

# what generate_latest writes: the text format 0.0.4 (CONTENT_TYPE_LATEST says version=1.0.0 since
# prometheus_client 0.22 although the body is the same; before, it was this string)
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TRAINING_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


def multiprocess_dir() -> str | None:
    """The folder of multiprocess mode, as prometheus_client itself reads it (None when off)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class Metrics:
    """The metrics of one app, on a registry of its own (or on `registry` when given: then it is
    used as is, without adding the process, platform and GC collectors)."""

    def __init__(self, version: str, registry: CollectorRegistry | None = None):
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)  # registers nothing in multiprocess mode
        self.registry = registry
        self.version = str(version)
        self.multiprocess_dir = multiprocess_dir()
        on = {"registry": registry}
        self.requests = Counter("orca_http_requests_total", "HTTP requests answered, by endpoint, method and status.",
                                ("endpoint", "method", "status"), **on)
        self.latency = Histogram("orca_http_request_duration_seconds",
                                 "HTTP request latency in seconds, by endpoint.", ("endpoint",),
                                 buckets=LATENCY_BUCKETS, **on)
        self.images_scored = Counter("orca_images_scored_total", "Spectrograms scored by /predict.", **on)
        self.skipped = Counter("orca_skipped_files_total",
                               "Files skipped as corrupt or oversized, by stage (predict, train).", ("stage",), **on)
        self.training_duration = Histogram("orca_training_duration_seconds",
                                           "Wall time of training jobs in seconds (queue wait excluded), by outcome.",
                                           ("outcome",), buckets=TRAINING_BUCKETS, **on)
        self.trainings = Counter("orca_trainings_total", "Finished training jobs, by outcome.", ("outcome",), **on)
        self.models_written = Counter("orca_models_written_total", "Model versions written.", **on)
        self.queue_length = Gauge("orca_queue_length", "Training jobs waiting for the device.",
                                  multiprocess_mode="livesum", **on)
        self.jobs_running = Gauge("orca_jobs_running", "Training jobs running.", multiprocess_mode="livesum", **on)
        self.pixel_lookups = Counter("orca_pixel_cache_lookups_total",
                                     "Decoded-pixel cache lookups, by result (hit, miss) and tier (disk, device; "
                                     "none for a miss).", ("result", "tier"), **on)
        self.pixel_decodes = Counter("orca_pixel_decodes_total",
                                     "Images decoded from PNG (or JPEG) into the pixel cache.", **on)
        self.spectrograms_rendered = Counter("orca_spectrograms_rendered_total",
                                             "Spectrograms drawn from audio clips (mp3, wav, flac) for a model's input.",
                                             **on)
        self.pixel_evictions = Counter("orca_pixel_cache_evictions_total",
                                       "Pixel cache entries evicted (least recently used), by tier.", ("tier",), **on)
        self.pixel_unwritten = Counter("orca_pixel_cache_unwritten_total",
                                       "Decoded images not written to the disk tier: the disk would have had less "
                                       "than ORCA_PIXEL_CACHE_MIN_FREE free, or the write failed.", **on)
        self.pixel_bytes = Gauge("orca_pixel_cache_bytes", "Bytes of decoded pixels held, by tier (disk: the "
                                 "folder at the last scan; device: this process's GPU tier).", ("tier",),
                                 multiprocess_mode="max", **on)
        self.build_info = Gauge("orca_build_info", "Always 1; the service version as a label.", ("version",),
                                multiprocess_mode="max", **on)
        self.build_info.labels(version=self.version).set(1)

    def count_skipped(self, n: int, stage: str = "predict") -> None:
        """Count `n` files skipped (corrupt or oversized images) by `stage` ("predict" or "train")."""
        if n:
            self.skipped.labels(stage=stage).inc(n)

    def count_scored(self, n: int) -> None:
        """Count `n` spectrograms scored."""
        if n:
            self.images_scored.inc(n)

    def record_pixels(self, event: str, tier: str | None, amount: float) -> None:
        """The pixel cache's events (scoring.pixel_cache): hit / miss / decode / evict / unwritten / bytes, and
        render (a spectrogram drawn from audio: scoring.stream, training.data)."""
        if event == "hit":
            self.pixel_lookups.labels(result="hit", tier=tier).inc(amount)
        elif event == "miss":
            self.pixel_lookups.labels(result="miss", tier="none").inc(amount)
        elif event == "decode":
            self.pixel_decodes.inc(amount)
        elif event == "render":
            self.spectrograms_rendered.inc(amount)
        elif event == "evict":
            self.pixel_evictions.labels(tier=tier).inc(amount)
        elif event == "unwritten":
            self.pixel_unwritten.inc(amount)
        elif event == "bytes":
            self.pixel_bytes.labels(tier=tier).set(amount)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of `GET /metrics`: `generate_latest`, text format 0.0.4; all workers'
        values in multiprocess mode."""
        registry = self.registry
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE
