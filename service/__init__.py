"""The orca ML endpoint's HTTP service: `/train` and `/predict` over S3 or local folders.

`create_app()` builds the Flask app and its runtime (`service.runtime`); `orca serve` (or
`python -m service`) serves it; `service.wsgi:app` is for gunicorn; `orca demo` runs it on the
bundled sample data.

The work is in Flask-free modules, functions of a `Runtime` that the blueprints (`service.routes`),
the CLI and batch scoring call alike: `service.train`, `service.predict`, `service.selection`,
`service.ops`. Importing this package or any of those does not import Flask: `create_app` is loaded
on first use (`from service import create_app` works as before).
"""

from ._version import __version__

__all__ = ["create_app", "__version__"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        globals()["create_app"] = create_app  # looked up once
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"create_app"})
