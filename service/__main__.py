"""`python -m service`: serve on $HOST:$PORT (default 127.0.0.1:5001) with werkzeug's threaded server.

For production use gunicorn (`gunicorn --bind 0.0.0.0:5001 --workers 1 --threads 4 --timeout 0
service.wsgi:app`, as Dockerfile.gpu does).
"""

from __future__ import annotations

import logging

from werkzeug.serving import make_server

from .config import from_env


def make(app=None, host: str | None = None, port: int | None = None):
    """A threaded werkzeug server for `app` (port 0 picks a free port: see `server.server_port`)."""
    if app is None:
        from .app import create_app

        app = create_app()
    config = app.extensions["orca"].config if "orca" in app.extensions else from_env()
    host = host or config["HOST"]
    port = int(port if port is not None else config["PORT"])
    return make_server(host, port, app, threaded=True)


def run(server) -> None:
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    logging.basicConfig(level=(from_env()["LOG_LEVEL"] or "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make()
    print(f"orca ML endpoint listening on http://{server.host}:{server.server_port}/", flush=True)
    run(server)


if __name__ == "__main__":
    main()
