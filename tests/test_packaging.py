"""pyproject.toml declares what the code imports, the serving install stays free of TensorFlow and test
tools, requirements.txt pins everything (and works as a constraints file), the wheel ships the sample
data `orca demo` needs, and `orca --help` lists every command."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
NOT_FOR_SERVING = {"tensorflow", "tf-keras", "tf2onnx", "keras", "moto", "pytest", "hypothesis"}
BRIDGE_IMPORTS = {"tensorflow", "tf_keras", "tf2onnx", "keras"}
BRIDGE_MODULES = {"conversion/keras_reference.py"}  # imports TensorFlow at module level, by design
COMMANDS = ("serve", "demo", "train", "predict", "evaluate", "new", "convert", "verify", "score", "embed", "query",
            "simulate", "spectrogram", "preprocess")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1])


def declared(*groups: str) -> set[str]:
    """Distribution names of the base dependencies ("base") and/or extras, normalized."""
    names = set()
    for group in groups:
        requirements = PROJECT["dependencies"] if group == "base" else PROJECT["optional-dependencies"][group]
        names |= {requirement_name(r) for r in requirements}
    return names


def code_packages() -> list[str]:
    return [p for p in SETUPTOOLS["packages"] if (ROOT / p / "__init__.py").exists()]


def third_party_imports(path: Path) -> tuple[set[str], set[str]]:
    """(imported when the module is imported, imported only inside functions): top-level names of
    absolute imports that are neither the standard library nor the project's own packages."""
    own = set(SETUPTOOLS["packages"])
    at_import, in_functions = set(), set()

    def visit(node, nested: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
                continue
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level:
                names = [child.module]
            else:
                visit(child, nested)
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                    (in_functions if nested else at_import).add(top)

    visit(ast.parse(path.read_text(), str(path)), False)
    return at_import, in_functions - at_import


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # import name → distribution names (slow: once)


def distribution_of(module: str) -> set[str]:
    return {normalize(d) for d in installed_distributions().get(module, [module])}


# --------------------------------------------------------------------------- dependencies

def test_the_base_dependencies_need_no_tensorflow_and_no_test_tools():
    assert not declared("base") & NOT_FOR_SERVING
    assert {"tensorflow", "tf-keras", "tf2onnx"} <= declared("bridge")
    assert {"pytest", "hypothesis", "moto", "scipy"} <= declared("dev")
    assert any(re.match(r"moto\[[^\]]*server", r) for r in PROJECT["optional-dependencies"]["dev"])


@pytest.mark.parametrize("package", code_packages())
def test_every_import_of_the_shipped_code_is_declared(package):
    base, bridge = declared("base"), declared("base", "bridge")
    scale = declared("scale")  # batch_scoring's Ray and pyarrow, imported only inside functions
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        at_import, in_functions = third_party_imports(path)
        for module in sorted(at_import | in_functions):
            dists = distribution_of(module)
            lazily_bridged = module in BRIDGE_IMPORTS and (module in in_functions or relative in BRIDGE_MODULES)
            if module in in_functions and dists & scale:
                continue
            if not dists & (bridge if lazily_bridged else base):
                problems.append(f"{relative} imports {module} ({', '.join(sorted(dists))}): not declared"
                                + (" in [project] dependencies" if not lazily_bridged else ""))
        if relative not in BRIDGE_MODULES:
            problems += [f"{relative} imports {module} at module level: only inside the functions that need it"
                         for module in sorted(at_import & BRIDGE_IMPORTS)]
    assert not problems, "\n".join(problems)


def test_the_bridge_module_is_imported_only_inside_functions():
    """conversion.keras_reference imports TensorFlow: the serving code may reach it only lazily."""
    for package in code_packages():
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                text = ast.unparse(node) if isinstance(node, (ast.Import, ast.ImportFrom)) else ""
                assert "keras_reference" not in text or path.relative_to(ROOT).as_posix() in BRIDGE_MODULES, path


def test_the_test_suite_and_the_benchmark_import_only_declared_packages():
    everything = declared("base", "bridge", "dev", "scale")
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tests", "bench"}
    problems = []
    for path in sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        at_import, in_functions = third_party_imports(path)
        for module in sorted((at_import | in_functions) - local):
            if not distribution_of(module) & everything:
                problems.append(f"{path.relative_to(ROOT)} imports {module}: in no group of pyproject.toml")
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # ~4.5 s: a fresh Python process
def test_serving_imports_no_tensorflow():
    """The app, the WSGI entry point and the CLI load without TensorFlow (run in a fresh process)."""
    code = ("import sys, orca.cli, service.wsgi, scoring.onnx_scoring, scoring.torch_scoring; "
            "orca.cli.parser(); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(BRIDGE_IMPORTS)!r}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCA_LOCAL_ROOT": "", "ORCA_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- requirements.txt

def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
            assert match, f"requirements.txt: {line!r} is not `name==version` (it must work as a constraints file)"
            pins[normalize(match[1])] = match[2]
    return pins


def test_requirements_pin_every_declared_dependency_exactly():
    pins = pinned()
    missing = declared("base", "bridge", "dev", "scale") - set(pins)
    assert not missing, f"not pinned in requirements.txt: {sorted(missing)}"


def test_requirements_spell_out_moto_server():
    """A constraints file cannot say moto[server], so requirements.txt lists its `server` requirements."""
    metadata = importlib.metadata.metadata("moto")  # pinned: not installed, the test fails
    server = {requirement_name(r) for r in metadata.get_all("Requires-Dist") or []
              if re.search(r"extra\s*==\s*.server.", r)}
    assert server, "moto declares no `server` extra any more?"
    assert not server - set(pinned()), sorted(server - set(pinned()))


# --------------------------------------------------------------------------- what the wheel holds

def test_the_wheel_holds_the_code_and_the_sample_data_but_no_tests():
    packages = set(SETUPTOOLS["packages"])
    assert {"service", "training", "scoring", "active_learning", "conversion", "models", "orca", "sample_data"} <= packages
    assert not packages & {"tests", "bench"} and not any(p.startswith(("tests.", "bench.")) for p in packages)
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert on_disk <= packages, f"packages not shipped: {sorted(on_disk - packages)}"
    # setuptools ships a listed package without its subpackages: each must be listed too
    nested = {".".join(p.parent.relative_to(ROOT).parts) for top in on_disk for p in (ROOT / top).rglob("*/__init__.py")}
    assert "service.routes" in nested and nested <= packages, f"subpackages not shipped: {sorted(nested - packages)}"
    assert PROJECT["scripts"] == {"orca": "orca.cli:main"}


def test_package_data_globs_cover_every_sample_file():
    folder = ROOT / "sample_data"
    shipped = {p for pattern in SETUPTOOLS["package-data"]["sample_data"] for p in folder.glob(pattern) if p.is_file()}
    files = {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files - shipped == set(), sorted(str(p.relative_to(ROOT)) for p in files - shipped)
    assert (folder / "orcasound" / "LICENSE") in shipped and len(list(folder.rglob("*.png"))) >= 20


def test_demo_finds_the_sample_data_beside_the_service_package():
    """A wheel installs sample_data/ beside service/ in site-packages, as in the checkout."""
    from service import demo

    assert demo.SAMPLE == Path(demo.__file__).resolve().parent.parent / "sample_data" / "orcasound"
    assert (demo.SAMPLE / "train").is_dir() and (demo.SAMPLE / "LICENSE").is_file()


def test_the_version_comes_from_the_service():
    import service

    assert "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "service._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", service.__version__)


def test_make_setup_installs_the_pins_then_the_project():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-r requirements\.txt", makefile)
    assert re.search(r"pip install .*--no-deps .*(-e )?\.$", makefile, re.M)


# --------------------------------------------------------------------------- the command

def test_orca_help_lists_every_command():
    script = Path(sys.executable).with_name("orca")
    commands = [[sys.executable, "-m", "orca", "--help"]] + ([[str(script), "--help"]] if script.exists() else [])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        for name in COMMANDS:
            assert re.search(rf"^\s+{name}\s", done.stdout, re.M), (command, name)
