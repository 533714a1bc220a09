"""WSGI entry point: `gunicorn service.wsgi:app` (see Dockerfile.gpu)."""

import logging

from .app import create_app
from .config import from_env

logging.basicConfig(level=(from_env()["LOG_LEVEL"] or "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()
