"""`python -m service`: serve on $HOST:$PORT (default 127.0.0.1:5001) with werkzeug's threaded server.

For production use gunicorn (`gunicorn --config python:service.gunicorn_hooks --graceful-timeout 60
--bind 0.0.0.0:5001 --workers 1 --threads 16 --timeout 0 service.wsgi:app`, as Dockerfile.gpu does).

SIGTERM or Ctrl-C stops the server and then the training jobs (`JobManager.shutdown`): no new jobs,
the queued ones fail as interrupted, the running one stops after its current epoch without publishing
anything. A second signal ends the process at once (the next start marks the job interrupted).
"""

from __future__ import annotations

import logging
import signal
import threading

from werkzeug.serving import make_server

from .config import from_env

log = logging.getLogger("service")

SHUTDOWN_TIMEOUT = 60.0  # seconds the running job gets to reach the end of its epoch


def make(app=None, host: str | None = None, port: int | None = None):
    """A threaded werkzeug server for `app` (port 0 picks a free port: see `server.server_port`)."""
    if app is None:
        from .app import create_app

        app = create_app()
    config = app.extensions["orca"].config if "orca" in app.extensions else from_env()
    host = host or config["HOST"]
    port = int(port if port is not None else config["PORT"])
    return make_server(host, port, app, threaded=True)


def run(server, shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Serve until SIGTERM or Ctrl-C (or `server.shutdown()`), then shut the training jobs down.
    The job database is opened first, so jobs a dead process left behind are marked interrupted now."""
    runtime = getattr(getattr(server, "app", None), "extensions", {}).get("orca")
    jobs = runtime.jobs if runtime is not None else None
    if jobs is not None:
        try:
            jobs.open()
        except Exception as error:  # noqa: BLE001 - a start-up failure, said in one line
            server.server_close()
            raise SystemExit(getattr(error, "message", None) or str(error)) from None
    previous = _install_stop_handlers(server, jobs)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were installed
        pass
    finally:
        try:
            if jobs is not None:
                try:
                    jobs.shutdown(shutdown_timeout)
                except KeyboardInterrupt:  # impatient: stop waiting for the epoch
                    jobs.shutdown(0)
        finally:
            server.server_close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _install_stop_handlers(server, jobs) -> dict:
    """SIGTERM and SIGINT: stop taking jobs, ask the running one to stop, end `serve_forever` (from
    another thread: it cannot be shut down from its own). The first signal restores the default
    handlers, so a second one ends the process. Only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.info("%s: stopping the server and the training jobs", signal.Signals(signum).name)

        def shut():
            if jobs is not None:
                jobs.begin_shutdown()
            server.shutdown()

        threading.Thread(target=shut, name="orca-stop", daemon=True).start()

    for signum in previous:
        signal.signal(signum, stop)
    return previous


def main() -> None:
    logging.basicConfig(level=(from_env()["LOG_LEVEL"] or "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make()
    print(f"orca ML endpoint listening on http://{server.host}:{server.server_port}/", flush=True)
    run(server)


if __name__ == "__main__":
    main()
