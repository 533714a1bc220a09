"""The orca ML endpoint's HTTP service: `/train` and `/predict` over S3 or local folders.

`create_app()` builds the Flask app and its runtime (`service.runtime`); `orca serve` (or
`python -m service`) serves it; `service.wsgi:app` is for gunicorn; `orca demo` runs it on the
bundled sample data.
"""

from ._version import __version__
from .app import create_app

__all__ = ["create_app", "__version__"]
