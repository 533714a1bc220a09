"""Training jobs: a bounded queue in front of one worker thread, so one training at a time runs on
the device and a job outlives the HTTP connection that asked for it.

`POST /jobs/train` submits and answers 202 at once; `GET /train` submits the same kind of job and
waits for it (its JSON and errors are those of the job). `GET /jobs/<id>` shows a job:

    {"id", "kind": "train", "status": "queued" | "running" | "succeeded" | "failed",
     "params": {...}, "created", "started", "finished" (unix seconds or null),
     "progress": {"epoch": 2, "epochs": 5, "metrics": [{"epoch": 1, "loss": …, "acc": …,
                  "val_loss": …, "val_acc": …}, …]},
     "result": <the /train JSON>            (succeeded)
     "error": {"status": 422, "message": …}  (failed: the status /train would have answered)}

At most `max_queued` jobs wait (429 beyond); the last `history` finished jobs are kept in memory
(a restart forgets them; the models and sidecars they wrote stay in storage).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from .errors import NotFound, ServiceError, TooManyRequests

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


@dataclass
class Job:
    kind: str
    params: dict
    run: object  # callable(job) -> result
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    epoch: int = 0
    epochs: int | None = None
    epoch_metrics: list = field(default_factory=list)
    result: object = None
    error: dict | None = None
    exception: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def on_epoch(self, epoch: int, epochs: int, values: dict) -> None:
        """The `training.train` callback: record the epoch's metrics."""
        self.epoch, self.epochs = int(epoch), int(epochs)
        self.epoch_metrics.append({"epoch": int(epoch), **{k: v for k, v in values.items()}})

    def to_json(self) -> dict:
        out = {"id": self.id, "job_id": self.id, "kind": self.kind, "status": self.status, "params": self.params,
               "created": self.created, "started": self.started, "finished": self.finished,
               "progress": {"epoch": self.epoch, "epochs": self.epochs, "metrics": list(self.epoch_metrics)}}
        if self.status == SUCCEEDED:
            out["result"] = self.result
        if self.status == FAILED:
            out["error"] = self.error
        return out


class JobManager:
    """One app's training jobs (built with the app's runtime, so never twice; its worker thread is
    started under the lock by the first submit)."""

    def __init__(self, max_queued: int = 8, history: int = 100, metrics=None):
        self.metrics = metrics  # service.metrics.Metrics, or None (no metrics)
        self.max_queued = max(0, int(max_queued))
        self.history = max(1, int(history))
        self.lock = threading.Condition()
        self.queue: collections.deque[Job] = collections.deque()
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.worker: threading.Thread | None = None

    # ------------------------------------------------------------------ client side
    def submit(self, kind: str, params: dict, run) -> Job:
        with self.lock:
            if len(self.queue) >= self.max_queued:
                raise TooManyRequests(f"the training queue is full ({len(self.queue)} jobs waiting, "
                                      f"ORCA_MAX_QUEUED={self.max_queued}); try again later")
            job = Job(kind, params, run)
            self.queue.append(job)
            self.jobs[job.id] = job
            self._trim()
            self._gauges()
            if self.worker is None or not self.worker.is_alive():
                self.worker = threading.Thread(target=self._work, name="orca-train-worker", daemon=True)
                self.worker.start()
            self.lock.notify_all()
        log.info("job %s queued (%s)", job.id, kind)
        return job

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no such job: {job_id} (unknown, or dropped from the history)")
        return job

    def list(self) -> list[Job]:
        with self.lock:
            return list(reversed(self.jobs.values()))

    def queued(self) -> int:
        with self.lock:
            return len(self.queue)

    # ------------------------------------------------------------------ worker side
    def _trim(self) -> None:
        finished = [j for j in self.jobs.values() if j.status in (SUCCEEDED, FAILED)]
        for job in finished[: max(0, len(finished) - self.history)]:
            del self.jobs[job.id]

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_length.set(len(self.queue))

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    self.lock.wait()
                job = self.queue.popleft()
                job.status, job.started = RUNNING, time.time()
                self._gauges()
            if self.metrics is not None:
                self.metrics.jobs_running.inc(1)
            started = time.monotonic()
            try:
                result = job.run(job)
            except BaseException as error:  # noqa: BLE001 - reported on the job, never kills the worker
                if isinstance(error, ServiceError):
                    job.error = {"status": error.status, "message": error.message}
                else:
                    log.error("job %s failed with a bug", job.id, exc_info=error)
                    job.error = {"status": 500, "message": "internal server error (see the server log)"}
                job.exception, job.status = error, FAILED
            else:
                job.result, job.status = result, SUCCEEDED
            finally:
                job.finished = time.time()
                if self.metrics is not None:
                    self.metrics.jobs_running.dec(1)
                    self.metrics.trainings.labels(outcome=job.status).inc()
                    self.metrics.training_duration.labels(outcome=job.status).observe(time.monotonic() - started)
                with self.lock:
                    self._trim()
                job.done.set()
            log.info("job %s %s in %.1f s", job.id, job.status, job.finished - job.started)
