"""No import cycle between the project's files, imports inside functions included (tests/import_graph.py
reads them from the source). A cycle hidden by a function-level import still ties the two files
together: neither can be understood, moved or tested without the other."""

from __future__ import annotations

import import_graph


def test_the_project_has_no_import_cycle():
    graph = import_graph.import_graph()
    assert {"service.app", "scoring.stream", "training.loop", "active_learning.acquisition"} <= set(graph)
    assert "scoring.clips" in graph["training.data"]  # edges are read: training decodes with scoring
    assert "audio.spectrogram" in graph["scoring.clips"]  # service → scoring → audio, never back
    assert not any(name.startswith(("scoring", "service", "training")) for name in graph["audio.spectrogram"])
    assert import_graph.cycles(graph) == []


def _write(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    _write(tmp_path, {
        "scoring/__init__.py": "",
        "scoring/a.py": "from .b import thing\n",
        "scoring/b.py": "def thing():\n    from scoring import a\n    return a\n",
        "scoring/c.py": "import scoring.a\n",  # depends on the cycle, not part of it
    })
    assert import_graph.cycles(import_graph.import_graph(tmp_path)) == [["scoring.a", "scoring.b"]]


def test_a_cycle_through_the_package_and_importlib_is_found(tmp_path):
    _write(tmp_path, {
        "models/__init__.py": "from .spec import X\n",
        "models/spec.py": "import importlib\n\ndef load():\n    importlib.import_module('models')\n",
        "models/other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from models import spec\n",
    })
    assert import_graph.cycles(import_graph.import_graph(tmp_path)) == [["models", "models.spec"]]
