"""gunicorn server hooks: `gunicorn --config python:service.gunicorn_hooks --graceful-timeout 60 …
service.wsgi:app` (see Dockerfile.gpu and docs/operations.md).

- `post_worker_init`: opens the job database when the worker starts (jobs a dead worker left queued
  or running are marked interrupted now, not at the first request), and chains the worker's SIGTERM
  handler so that SIGTERM also begins the jobs' shutdown at once: no new jobs (503), the queued ones
  fail as interrupted, the running one stops after its current epoch. Its `GET /train` waiter is
  answered then, so the worker's in-flight requests end well before `--graceful-timeout`.
- `worker_exit` (in the worker, after its loop ended): `JobManager.shutdown` with what is left of the
  graceful timeout, minus a margin, so the database says "interrupted" before the arbiter's SIGKILL.

Only functions live here: every other module-level name of a gunicorn config module that matches a
setting would be taken as that setting.
"""

from __future__ import annotations

WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the arbiter stops instead of retrying
MARGIN_S = 2.0  # seconds kept between the end of worker_exit and the arbiter's SIGKILL


def _runtime(worker):
    """The app's runtime, or None for an app that is not this service (or did not load)."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None)
    return extensions.get("orca") if isinstance(extensions, dict) else None


def post_worker_init(worker) -> None:
    import signal
    import threading
    import time

    runtime = _runtime(worker)
    if runtime is None:
        return
    try:
        runtime.jobs.open()
    except Exception as error:  # noqa: BLE001 - a start-up failure, said in one line (no traceback)
        import sys

        print(f"orca: {getattr(error, 'message', None) or error}", file=sys.stderr, flush=True)
        raise SystemExit(WORKER_BOOT_ERROR) from None
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        worker.orca_sigterm_at = time.monotonic()  # worker_exit's deadline starts here, as the arbiter's
        # not here: the manager's lock may be held by this (main) thread's interrupted frame
        threading.Thread(target=runtime.jobs.begin_shutdown, name="orca-jobs-shutdown", daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn sets it: active requests are not disturbed


def worker_exit(server, worker) -> None:
    import time

    runtime = _runtime(worker)
    if runtime is None:
        return
    jobs = runtime.jobs
    graceful = float(getattr(getattr(worker, "cfg", None), "graceful_timeout", 30) or 30)
    began = getattr(worker, "orca_sigterm_at", None)
    # SIGTERM: what the arbiter still allows; SIGQUIT / SIGINT (quick stop) or a crash: no wait
    left = graceful - (time.monotonic() - began) - MARGIN_S if began is not None else 0.0
    stopped = jobs.shutdown(max(0.0, left))
    worker.log.info("training jobs shut down%s", "" if stopped else " (the running job was marked interrupted)")
