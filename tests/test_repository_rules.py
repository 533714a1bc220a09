"""Rules of the repository that keep it carryable: one place reads the environment, and documents it;
no module-level mutable state in `service/`, `training/`, `scoring/` and `active_learning/` (an app owns its state); only
the service's HTTP layer imports Flask; a short README."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import import_graph
from service import config

ROOT = Path(__file__).resolve().parent.parent
OWNED_BY_APPS = [p for folder in ("service", "training", "scoring", "active_learning")
                 for p in sorted((ROOT / folder).rglob("*.py"))]
# Registries that declarations fill once, at import, and that are only read afterwards: what a
# module declares, not what an app owns.
DECLARED_REGISTRIES = {("acquisition.py", "_REGISTRY")}
MUTABLE_CALLS = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "Lock", "RLock", "Condition",
                 "ContextVar", "Event", "Semaphore", "BoundedSemaphore", "Counter"}


def _environment_table(text: str) -> list[tuple[str, str]]:
    """(variable, default) rows of the table headed `| variable | default | meaning |`."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith("| variable | default | meaning |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append((cells[0].strip("`"), cells[1]))
        elif inside:
            break
    return rows


def test_operations_doc_lists_every_setting_of_config_with_its_default():
    rows = _environment_table((ROOT / "docs" / "operations.md").read_text())
    assert [name for name, _ in rows] == [s.env for s in config.SETTINGS]
    for (name, documented), setting in zip(rows, config.SETTINGS):
        if setting.key == "LOCAL_ROOT":
            assert "working directory" in documented
        elif setting.default is None:
            assert documented.startswith("unset"), name
        else:
            assert f"`{setting.default}`" in documented, (name, documented)


def test_only_config_reads_the_environment():
    names = {s.env for s in config.SETTINGS}
    readers = []
    for path in OWNED_BY_APPS + sorted((ROOT / "orca").glob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"""(?:os\.environ(?:\.get)?[\[(]|os\.getenv\()\s*["']([A-Z_0-9]+)["']""", text):
            if match.group(1) in names or match.group(1).startswith("ORCA_"):
                readers.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
    assert readers == []


def _module_level_mutables(path: Path) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if value is None or all(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                continue
            if all(isinstance(t, ast.Name) and (path.name, t.id) in DECLARED_REGISTRIES for t in targets):
                continue
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp))
            if isinstance(value, ast.Call):
                func = value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                mutable = name in MUTABLE_CALLS
            if mutable:
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_module_level_mutable_state_in_service_and_training():
    found = [hit for path in OWNED_BY_APPS for hit in _module_level_mutables(path)]
    assert found == [], "module-level mutable state (put it on the app's Runtime): " + ", ".join(found)


def test_the_rule_above_sees_a_module_level_cache(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import threading\nCACHE = {}\nLOCK = threading.Lock()\nSIZES = (1, 2)\n")
    assert len(_module_level_mutables(sample)) == 2


def test_readme_is_an_entry_page_of_at_most_250_lines():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in ("api.md", "operations.md", "bridge.md", "researchers.md", "design.md"):
        assert (ROOT / "docs" / doc).is_file() and f"docs/{doc}" in readme, doc


WEB = {"flask", "werkzeug"}


def _web_imports(path: Path) -> list[str]:
    """`path:line module` for every import of Flask or werkzeug in the file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {name}" for name in names if name.split(".")[0] in WEB]
    return found


def test_only_the_services_http_layer_imports_flask():
    """The use cases (service.train, .predict, .selection, .ops), the CLI, batch scoring and every other
    package run without Flask: only `service/`'s app, server and routes import it (or werkzeug)."""
    outside = [p for package in import_graph.PACKAGES if package != "service" for p in sorted((ROOT / package).rglob("*.py"))]
    assert any(p.parts[-2:] == ("orca", "cli.py") for p in outside) and any("batch_scoring" in p.parts for p in outside)
    assert [hit for path in outside + sorted(ROOT.glob("*.py")) for hit in _web_imports(path)] == []
    http_layer = {ROOT / "service" / "app.py", ROOT / "service" / "__main__.py", *(ROOT / "service" / "routes").glob("*.py")}
    importers = {path for path in (ROOT / "service").rglob("*.py") if _web_imports(path)}
    assert ROOT / "service" / "app.py" in importers and ROOT / "service" / "routes" / "web.py" in importers
    assert importers <= http_layer, sorted(str(p.relative_to(ROOT)) for p in importers - http_layer)


def test_the_rule_above_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\n\ndef f():\n    from werkzeug.serving import make_server\n    import flask.json\n")
    assert _web_imports(sample) == ["m.py:4 werkzeug.serving", "m.py:5 flask.json"]


def test_no_test_skips_on_a_missing_package():
    """Every package the tests import is pinned in requirements.txt (test_packaging checks that), so a
    missing one is a broken install and must fail the run, never turn it green with skips."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "importorskip":
                found.append(f"{path.name}:{node.lineno}")
    assert found == [], "pytest.importorskip of a pinned package: " + ", ".join(found)
