"""Training jobs: a bounded queue in front of one worker thread, so one training at a time runs on
the device and a job outlives the HTTP connection that asked for it.

`POST /jobs/train` submits and answers 202 at once; `GET /train` submits the same kind of job and
waits for it (its JSON and errors are those of the job). `GET /jobs/<id>` shows a job:

    {"id", "kind": "train", "status": "queued" | "running" | "succeeded" | "failed",
     "params": {...}, "created", "started", "finished" (unix seconds or null),
     "progress": {"epoch": 2, "epochs": 5, "metrics": [{"epoch": 1, "loss": …, "acc": …,
                  "val_loss": …, "val_acc": …}, …]},
     "result": <the /train JSON>            (succeeded)
     "error": {"status": 422, "message": …}  (failed: the status /train would have answered;
              a job the service stopped: {"status": 503, "message": "interrupted: …", "reason": "interrupted"})}

At most `max_queued` jobs wait (429 beyond). With a store (`service.jobstore.JobStore`, as every app
has) every job is recorded in the state folder's SQLite database as it changes, `get` and `list` read
it, so jobs survive a restart, and the last `history` finished jobs are kept there; a job that was
queued or running when its process died is marked failed ("interrupted") when the next one opens the
database. Without a store (a bare `JobManager()`), the same history is kept in memory.

`shutdown(timeout)` stops the manager: no new jobs (503), the queued ones fail as interrupted, and
the running one stops after its current epoch (its `on_epoch` raises `JobInterrupted`), before
`service.train.run_train` publishes anything.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from .errors import Busy, NotFound, ServiceError, TooManyRequests
from .jobstore import JobStoreError

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
INTERRUPTED = "interrupted"  # error["reason"] of a job the service stopped
STOPPED = "interrupted: the service stopped before the job finished"
DIED = STOPPED + " (its process ended); submit it again"
SHUT_DOWN = STOPPED + " (the service was shut down); submit it again"


class ShuttingDown(Busy):
    """The job manager is shutting down: no new jobs; a job it stopped fails with this (503, with
    `Retry-After: 30`: a restarted service takes the job)."""


class JobInterrupted(Exception):
    """Raised by a job's `on_epoch` once shutdown was asked: stops the training between two epochs.
    The worker reports it as an interrupted job; it never reaches a client as such."""


def interrupted_error(message: str) -> dict:
    return {"status": ShuttingDown.status, "message": message, "reason": INTERRUPTED}


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
    stop_requested: threading.Event = field(default_factory=threading.Event)
    manager: "JobManager | None" = field(default=None, repr=False, compare=False)

    def on_epoch(self, epoch: int, epochs: int, values: dict) -> None:
        """The `training.loop.train` callback: record the epoch's metrics; then, if the service is
        shutting down, stop the training (`JobInterrupted`) before it publishes anything."""
        self.epoch, self.epochs = int(epoch), int(epochs)
        entry = {"epoch": int(epoch), **{k: v for k, v in values.items()}}
        self.epoch_metrics.append(entry)
        if self.manager is not None:
            self.manager._progress(self, entry)
        if self.stop_requested.is_set():
            raise JobInterrupted(f"job {self.id} stopped after epoch {epoch} of {epochs}: the service is shutting down")

    def to_json(self) -> dict:
        out = {"id": self.id, "job_id": self.id, "kind": self.kind, "status": self.status, "params": self.params,
               "created": self.created, "started": self.started, "finished": self.finished,
               "progress": {"epoch": self.epoch, "epochs": self.epochs, "metrics": list(self.epoch_metrics)}}
        if self.status == SUCCEEDED:
            out["result"] = self.result
        if self.status == FAILED:
            out["error"] = self.error
        return out

    def row(self) -> dict:
        """The job's columns in the store."""
        return {"id": self.id, "kind": self.kind, "status": self.status, "params": self.params,
                "created": self.created, "started": self.started, "finished": self.finished, "epoch": self.epoch,
                "epochs": self.epochs, "result": self.result, "error": self.error}

    @classmethod
    def from_row(cls, row: dict) -> "Job":
        """A read-only snapshot of a stored job (what `GET /jobs/<id>` shows)."""
        job = cls(row["kind"], row["params"], None, id=row["id"], status=row["status"], created=row["created"],
                  started=row["started"], finished=row["finished"], epoch=row["epoch"], epochs=row["epochs"],
                  epoch_metrics=list(row["metrics"]), result=row["result"], error=row["error"])
        if job.status in (SUCCEEDED, FAILED):
            job.done.set()
        return job


class JobManager:
    """One app's training jobs (built with the app's runtime, so never twice; its worker thread is
    started under the lock by the first submit). `store`: the job database, opened by `open()` (the
    servers call it at start-up) or by the first use."""

    def __init__(self, max_queued: int = 8, history: int = 100, metrics=None, store=None):
        self.metrics = metrics  # service.metrics.Metrics, or None (no metrics)
        self.store = store  # service.jobstore.JobStore, or None (jobs in memory only)
        self.max_queued = max(0, int(max_queued))
        self.history = max(1, int(history))
        self.lock = threading.Condition()  # over an RLock
        self.queue: collections.deque[Job] = collections.deque()
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()  # live (+ history without a store)
        self.worker: threading.Thread | None = None
        self.current: Job | None = None  # the running job
        self.opened = False
        self.stopping = False
        self.stop_requested_at: float | None = None  # time.monotonic() of begin_shutdown

    # ------------------------------------------------------------------ start-up
    def open(self) -> None:
        """Open the job database; mark failed (interrupted) the jobs that were queued or running in a
        process that has ended since; apply the history bound. Idempotent."""
        if self.store is None or self.opened:
            return
        with self.lock:
            if self.opened:
                return
            if self.stopping:
                raise ShuttingDown("the service is shutting down")
            self.store.open()
            reaped = self.store.reap_dead_owners(FAILED, interrupted_error(DIED))
            self.store.trim(self.history)
            self.opened = True
        if reaped:
            log.warning("%d job(s) were queued or running when their process ended, now failed (interrupted): %s",
                        len(reaped), ", ".join(reaped))

    # ------------------------------------------------------------------ client side
    def submit(self, kind: str, params: dict, run) -> Job:
        with self.lock:
            if self.stopping:
                raise ShuttingDown("the service is shutting down and takes no new jobs; submit it again once it "
                                   "is back")
            self.open()
            if len(self.queue) >= self.max_queued:
                raise TooManyRequests(f"the training queue is full ({len(self.queue)} jobs waiting, "
                                      f"ORCA_MAX_QUEUED={self.max_queued}); try again later")
            job = Job(kind, params, run, manager=self)
            if self.store is not None:
                self.store.insert(job.row())  # JobStoreError (503): not queued
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
        if self.store is not None:
            self.open()
            row = self.store.get(job_id)
            job = Job.from_row(row) if row is not None else None
        else:
            with self.lock:
                job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no such job: {job_id} (unknown, or dropped from the history)")
        return job

    def list(self) -> list[Job]:
        """Every job remembered, newest first."""
        if self.store is not None:
            self.open()
            return [Job.from_row(row) for row in self.store.list()]
        with self.lock:
            return list(reversed(self.jobs.values()))

    def queued(self) -> int:
        with self.lock:
            return len(self.queue)

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self) -> None:
        """Stop taking jobs, fail the queued ones (interrupted), and ask the running one to stop after
        its current epoch. Returns at once; idempotent."""
        with self.lock:
            if self.stopping:
                return
            self.stopping = True
            self.stop_requested_at = time.monotonic()
            queued = list(self.queue)
            self.queue.clear()
            running = self.current
            if running is not None:
                running.stop_requested.set()
            self._gauges()
            self.lock.notify_all()  # an idle worker exits
        for job in queued:
            self._finish(job, FAILED, error=interrupted_error(SHUT_DOWN), exception=ShuttingDown(SHUT_DOWN))
        log.info("jobs: shutting down (%s running, %d queued jobs interrupted)",
                 running.id if running is not None else "none", len(queued))

    def shutdown(self, timeout: float | None = 60.0) -> bool:
        """`begin_shutdown`, then wait up to `timeout` seconds (None: for ever) for the running job to
        stop; one still running then is marked failed (interrupted) too. Closes the job database.
        True when the running job (if any) stopped in time."""
        self.begin_shutdown()
        with self.lock:  # (a Condition: unlike Thread.join, safe to interrupt with Ctrl-C)
            if self.worker is not threading.current_thread():
                self.lock.wait_for(lambda: self.current is None, None if timeout is None else max(0.0, timeout))
            running = self.current
        stopped = running is None
        if running is not None:
            log.warning("job %s still running %.1f s after the shutdown began: marked interrupted", running.id,
                        time.monotonic() - self.stop_requested_at)
            self._finish(running, FAILED, error=interrupted_error(SHUT_DOWN), exception=ShuttingDown(SHUT_DOWN))
        if self.store is not None:
            self.store.close()
        return stopped

    # ------------------------------------------------------------------ worker side
    def _trim(self) -> None:
        finished = [j for j in self.jobs.values() if j.status in (SUCCEEDED, FAILED)]
        keep = 0 if self.store is not None else self.history  # with a store, the history is in the database
        for job in finished[: max(0, len(finished) - keep)]:
            del self.jobs[job.id]

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_length.set(len(self.queue))

    def _progress(self, job: Job, entry: dict) -> None:
        if self.store is not None:
            try:
                self.store.add_epoch(job.id, job.epoch, job.epochs, entry)
            except JobStoreError as error:
                log.error("job %s: %s", job.id, error.message)

    def _record(self, job_id: str, **values) -> None:
        if self.store is not None:
            try:
                self.store.update(job_id, **values)
            except JobStoreError as error:
                log.error("job %s: %s", job_id, error.message)

    def _finish(self, job: Job, status: str, result=None, error: dict | None = None,
                exception: BaseException | None = None) -> bool:
        """Record the end of `job` (once: False if it had already ended) and wake its waiters."""
        with self.lock:
            if job.finished is not None:
                return False
            finished = time.time()
            self._record(job.id, status=status, finished=finished, result=result, error=error)
            job.result, job.error, job.exception = result, error, exception
            job.status, job.finished = status, finished
            if self.current is job:
                self.current = None
                self.lock.notify_all()  # shutdown waits for this
            self._trim()
            if self.store is not None:
                try:
                    self.store.trim(self.history)
                except JobStoreError as trim_error:
                    log.error("jobs: %s", trim_error.message)
        job.done.set()
        return True

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.stopping:
                    self.lock.wait()
                if self.stopping:  # begin_shutdown emptied the queue
                    return
                job = self.queue.popleft()
                job.status, job.started = RUNNING, time.time()
                self.current = job
                self._record(job.id, status=RUNNING, started=job.started)
                self._gauges()
            if self.metrics is not None:
                self.metrics.jobs_running.inc(1)
            started = time.monotonic()
            outcome = dict(status=FAILED)
            try:
                if job.stop_requested.is_set():
                    raise JobInterrupted(f"job {job.id} not started: the service is shutting down")
                result = job.run(job)
            except JobInterrupted as stop:
                log.warning("%s", stop)
                outcome.update(error=interrupted_error(SHUT_DOWN), exception=ShuttingDown(SHUT_DOWN))
            except BaseException as error:  # noqa: BLE001 - reported on the job, never kills the worker
                if isinstance(error, ServiceError):
                    outcome.update(error={"status": error.status, "message": error.message})
                else:
                    log.error("job %s failed with a bug", job.id, exc_info=error)
                    outcome.update(error={"status": 500, "message": "internal server error (see the server log)"})
                outcome.update(exception=error)
            else:
                outcome = dict(status=SUCCEEDED, result=result)
            finally:
                if self.metrics is not None:
                    self.metrics.jobs_running.dec(1)
                    self.metrics.trainings.labels(outcome=outcome["status"]).inc()
                    self.metrics.training_duration.labels(outcome=outcome["status"]).observe(
                        time.monotonic() - started)
                if not self._finish(job, **outcome):  # shutdown gave up waiting and marked it already
                    log.warning("job %s ended (%s) after it was marked interrupted", job.id, outcome["status"])
            log.info("job %s %s in %.1f s", job.id, job.status, job.finished - job.started)
