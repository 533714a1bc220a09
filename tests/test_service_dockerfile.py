"""Dockerfile.gpu, checked by reading it (there is no Docker engine in CI): it installs the serving
stack only, at the pinned versions, runs as a non-root user with a HEALTHCHECK on /health, copies
what exists and everything the package needs, serves something that answers, and its commands match
the documentation's `docker build` / `docker run` lines."""

import importlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.gpu"
LOCK = ROOT / "requirements-image.lock"  # `make lock`
IMAGE = "orca-ml-endpoint:gpu"
NOT_IN_THE_IMAGE = {"tensorflow", "tf-keras", "tf2onnx", "keras", "moto", "pytest", "hypothesis", "scipy"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions():
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def command():
    cmd = [rest for word, rest in instructions() if word == "CMD"]
    assert len(cmd) == 1
    return json.loads(cmd[0])  # exec form: no shell in between


def pip_installs():
    """(argument list, the whole RUN line) of every `pip install` in a RUN instruction."""
    found = []
    for word, rest in instructions():
        if word != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands, words = [], []
        for token in lexer:  # split at &&, ||, ;, | outside quotes
            if token in ("&&", "||", ";", "|"):
                commands.append(words)
                words = []
            else:
                words.append(token)
        for words in commands + [words]:
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install" or words[i:i + 3] == ["-m", "pip", "install"]:
                    start = i + 2 if words[i + 1] == "install" else i + 3
                    found.append((words[start:], rest))
                    break
    return found


def documented_docker_lines():
    """`docker build` / `docker run` lines of the image in README.md and docs/*.md."""
    lines = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if doc.exists():
            lines += [(doc.name, line.strip()) for line in doc.read_text().splitlines()
                      if re.search(r"\bdocker (build|run)\b", line) and IMAGE in line]
    return lines


# --------------------------------------------------------------------------- what it runs

def test_dockerfile_serves_the_wsgi_app_on_port_5001_with_gunicorn():
    cmd = command()
    assert cmd[0] == "gunicorn"
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0:5001"
    assert cmd[cmd.index("--workers") + 1] == "1"
    module, _, attribute = cmd[-1].partition(":")
    assert hasattr(importlib.import_module(module), attribute)
    assert ("EXPOSE", "5001") in instructions()


def test_the_dockerfiles_gunicorn_command_answers_http():
    cmd = command()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd[cmd.index("--bind") + 1] = f"127.0.0.1:{port}"
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen([str(gunicorn)] + cmd[1:], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "ORCA_LOCAL_ROOT": ""})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = json.loads(response.read())
                break
            except urllib.error.HTTPError as error:  # it answers, but not 200: no point waiting
                pytest.fail(f"GET / answered {error.code}: {error.read()[:500]!r}")
            except OSError:  # not listening yet
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
                time.sleep(0.3)
        assert body["name"] == "orca-ml-endpoint" and "/train" in body["endpoints"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert json.loads(response.read())["status"] == "ok"  # what the HEALTHCHECK asks
    finally:
        process.terminate()
        process.wait(timeout=30)


# --------------------------------------------------------------------------- what it installs

def test_the_image_installs_the_lock_with_hashes_then_the_project_without_dependencies():
    """One install of the lock, hash-checked, and one of the project alone: nothing unpinned comes in,
    neither a dependency nor the build backend (no build isolation: setuptools comes from the lock)."""
    installs = pip_installs()
    assert installs, "no pip install in Dockerfile.gpu"
    locked, project = [], []
    for position, (args, _) in enumerate(installs):
        options = dict(zip(args, args[1:]))
        sources = [options[f] for f in ("-r", "--requirement") if f in options]
        assert "requirements.txt" not in [Path(s).name for s in sources], f"installs all of requirements.txt: {args}"
        values = set(sources) | {options[f] for f in ("-c", "--constraint") if f in options}
        targets = [a for a in args if not a.startswith("-") and a not in values]
        if sources:
            assert sources == [LOCK.name] and not targets, f"installs something besides the lock: {args}"
            assert "--require-hashes" in args, f"the lock installed without --require-hashes: {args}"
            locked.append(position)
        else:
            assert targets == ["."], f"installs {targets}: only the project may be installed outside the lock"
            assert "--no-deps" in args, f"the project's dependencies would be resolved again, unpinned: {args}"
            assert "--no-build-isolation" in args, f"the build backend would be downloaded, unpinned: {args}"
            project.append(position)
    assert len(locked) == 1 and len(project) == 1, installs
    assert locked[0] < project[0], "the project is installed before its dependencies"
    base = {normalize(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    assert not base & NOT_IN_THE_IMAGE, f"pyproject's base dependencies include {sorted(base & NOT_IN_THE_IMAGE)}"


# --------------------------------------------------------------------------- the lock it installs

def lock_lines() -> list[tuple[str, list[str]]]:
    """(requirement, its options) per entry of the lock, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            requirement, *options = line.split()
            entries.append((requirement, options))
    return entries


def lock_pins() -> dict[str, str]:
    pins = {}
    for requirement, _ in lock_lines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.!+_-]+)", requirement)
        assert match, f"the lock's {requirement!r} is not `name==version`"
        assert normalize(match[1]) not in pins, f"{match[1]} twice in the lock"
        pins[normalize(match[1])] = match[2]
    return pins


def requirements_txt_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def test_every_package_of_the_lock_is_pinned_with_sha256_hashes_only():
    entries = lock_lines()
    assert len(entries) > len(PYPROJECT["project"]["dependencies"]), "the lock has no transitive dependencies"
    for requirement, options in entries:
        hashes = [o for o in options if o.startswith("--hash=sha256:")]
        assert hashes, f"{requirement}: no --hash=sha256: (pip --require-hashes refuses the whole lock)"
        assert hashes == options, f"{requirement}: {set(options) - set(hashes)} beside its hashes"
        for option in hashes:
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option), f"{requirement}: {option}"
    assert lock_pins()


def test_the_lock_holds_every_serving_dependency_of_pyproject_within_its_range():
    pins = lock_pins()
    for spec in PYPROJECT["project"]["dependencies"] + PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = normalize(requirement.name)
        assert name in pins, f"pyproject.toml needs {spec}; the lock lacks it (make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"the lock's {name}=={pins[name]} is outside pyproject.toml's {spec} (make lock)"


def test_the_lock_has_requirements_txts_versions_where_both_pin():
    pins, pinned = lock_pins(), requirements_txt_pins()
    differ = {name: (version, pinned[name]) for name, version in pins.items()
              if name in pinned and version != pinned[name]}
    assert not differ, f"lock vs requirements.txt: {differ} (make lock)"
    for spec in PYPROJECT["project"]["dependencies"]:  # every direct one is pinned in both
        assert normalize(Requirement(spec).name) in pinned, f"requirements.txt does not pin {spec}"


def test_the_lock_has_none_of_what_the_image_must_not_contain():
    found = set(lock_pins()) & NOT_IN_THE_IMAGE
    assert not found, f"the lock would put {sorted(found)} in the image"


def test_make_lock_regenerates_the_lock_from_pyproject_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lock:.*\n((?:\t.*\n?)+)", makefile, re.M)
    assert recipe, "no `lock` target in the Makefile"
    body = recipe[1].replace("\\\n", " ")
    assert "--generate-hashes" in body and "-c requirements.txt" in body and f"-o {LOCK.name}" in body
    assert "['project']['dependencies']" in body and "['build-system']['requires']" in body
    assert "--python-version 3.11" in body and "x86_64" in body  # the image's python and platform
    assert "make lock" in LOCK.read_text().splitlines()[1], "the lock does not say how it was made"


def test_dockerfile_copies_what_exists_and_what_the_package_needs():
    copied = set()
    for word, rest in instructions():
        if word == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source.rstrip("/"))
    needed = {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}  # a subpackage comes with its folder
    needed |= {"pyproject.toml", LOCK.name}
    needed.add(PYPROJECT["project"].get("readme", "pyproject.toml"))
    needed |= {Path(f).parts[0] for f in PYPROJECT["project"].get("license-files", [])}
    assert needed <= copied, f"the build needs these too: {sorted(needed - copied)}"
    assert not copied & {"tests", "bench", "."}, "the image gets the package, not the source tree"


# --------------------------------------------------------------------------- how it runs

def test_the_image_runs_as_a_non_root_user():
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users, "no USER instruction: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(word == "RUN" and re.search(rf"\buseradd\b.*\b{re.escape(users[-1])}\b", rest)
               for word, rest in instructions())


def test_the_image_has_a_healthcheck_on_health_without_curl():
    checks = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, cmd = checks[0].partition("CMD")
    assert cmd, "HEALTHCHECK without CMD"
    probe = json.loads(cmd) if cmd.strip().startswith("[") else shlex.split(cmd)
    assert probe[0] in ("python", "python3") and "/health" in " ".join(probe)
    assert not {"curl", "wget"} & set(probe), "python:3.11-slim has neither curl nor wget"
    port = re.search(r"127\.0\.0\.1:(\d+)/health|localhost:(\d+)/health", " ".join(probe))
    assert port and (port[1] or port[2]) == "5001"


# --------------------------------------------------------------------------- the documentation

def test_documented_docker_lines_match_the_dockerfile():
    lines = documented_docker_lines()
    if not lines:
        pytest.skip("README.md and docs/ have no `docker ... orca-ml-endpoint:gpu` line yet")
    exposed = {rest.split("/")[0] for word, rest in instructions() if word == "EXPOSE"}
    runs = [line for _, line in lines if "docker run" in line]
    builds = [line for _, line in lines if "docker build" in line]
    assert runs and builds, lines
    for line in runs:
        published = re.search(r"-p\s+(\d+):(\d+)", line)
        assert published and published[2] in exposed, line
        assert "--gpus all" in line, line
    for line in builds:
        assert "-f Dockerfile.gpu" in line and line.rstrip().endswith(" ."), line
    header = [line.lstrip("# ").strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")]
    assert any("docker build -f Dockerfile.gpu" in line and IMAGE in line for line in header)
    assert any("docker run" in line and IMAGE in line for line in header)


# --------------------------------------------------------------------------- liveness under load

@pytest.mark.slow
def test_under_the_images_command_health_stays_fast_while_more_trains_wait_than_there_are_threads(tmp_path):
    """The image's gunicorn command, a small real model: more concurrent GET /train than request
    threads. At most ORCA_MAX_TRAIN_WAITERS wait for their training (one after the other on the
    worker), the rest get 503 + Retry-After at once (before the first training ends); meanwhile /health
    keeps answering (some probe sent and answered between one training's answer and the next) and
    /predict is served. Only the order of events is asserted, never a duration: the 2 cores are shared.
    The figures it prints go to docs/operations.md."""
    import shutil
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ops_support import make_root

    cmd = command()
    threads = int(cmd[cmd.index("--threads") + 1])
    args = make_root(tmp_path / "data")
    spectrograms = tmp_path / "data" / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    for i, png in enumerate(sorted((tmp_path / "data" / "labeled" / "validation").glob("*/*.png"))):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd[cmd.index("--bind") + 1] = f"127.0.0.1:{port}"
    env = {**os.environ, "ORCA_LOCAL_ROOT": str(tmp_path / "data"), "ORCA_DEVICE": "cpu",
           "ORCA_CACHE_DIR": str(tmp_path / "cache"), "ORCA_STATE_DIR": str(tmp_path / "state"),
           "ORCA_PRELOAD_TORCH": "1"}
    process = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn"))] + cmd[1:], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"

    def get(path, query=None, timeout=600):
        """(status, headers, started, answered): the two times from time.monotonic(), for ordering."""
        url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status, headers = response.status, response.headers
        except urllib.error.HTTPError as error:
            status, headers = error.code, error.headers
        return status, headers, started, time.monotonic()

    waiters = int(os.environ.get("ORCA_MAX_TRAIN_WAITERS", "8"))
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                get("/health", timeout=5)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        while get("/ready", timeout=30)[0] != 200:  # 503 until torch's start-up import has finished
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        trains = threads + 4  # more than there are request threads
        health, stop = [], threading.Event()

        def probe():
            while not stop.is_set():
                health.append(get("/health", timeout=300))
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        with ThreadPoolExecutor(trains + 1) as pool:
            waiting = [pool.submit(get, "/train", {**args, "epochs": 1}) for _ in range(trains)]

            def trains_in():  # the refused ones answered, the others' jobs in the queue
                refused = sum(1 for f in waiting if f.done() and f.result()[0] == 503)
                jobs = json.loads(urllib.request.urlopen(f"{base}/jobs", timeout=300).read())["jobs"]
                return refused == trains - waiters and len(jobs) == waiters

            deadline = time.monotonic() + 300
            while not trains_in():
                assert time.monotonic() < deadline and process.poll() is None, "the trains did not get in"
                time.sleep(0.05)
            trains_are_in = time.monotonic()
            predict = pool.submit(get, "/predict", {
                "model_url": args["model_url"], "unlabeled_url": str(tmp_path / "data" / "unlabeled") + "/",
                "img_width": args["img_width"], "img_height": args["img_height"]}).result()
            answers = [future.result() for future in waiting]
        stop.set()
        prober.join()
    finally:
        process.terminate()
        process.wait(timeout=60)
    statuses = sorted(status for status, *_ in answers)
    assert statuses == [200] * waiters + [503] * (trains - waiters), statuses
    assert all(headers["Retry-After"] for status, headers, *_ in answers if status == 503)
    trained = sorted(answered for status, _, _, answered in answers if status == 200)
    # at once: every refusal answered before the first training finished
    assert max(answered for status, _, _, answered in answers if status == 503) < trained[0]
    assert predict[0] == 200 and predict[3] < trained[-1], (predict, trained)  # served while trains waited
    assert all(status == 200 for status, *_ in health) and len(health) >= 10
    # /health stays live: after the trains got in, between one training's answer and the next, some probe
    # was sent and answered (a server whose threads all waited would answer one only as a training ends)
    edges = [trains_are_in] + [answered for answered in trained if answered > trains_are_in]
    print("seconds between the trainings' answers:", [round(b - a, 2) for a, b in zip(edges, edges[1:])])
    for begin, end in zip(edges, edges[1:]):
        assert any(begin < sent and answered < end for _, _, sent, answered in health), (begin, end)
    latencies = [answered - sent for *_, sent, answered in health]
    print(f"/health during {waiters} waiting trains: {len(latencies)} probes, max {max(latencies) * 1000:.0f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; trains took "
          f"{max(answered - sent for _, _, sent, answered in answers):.1f} s; /predict answered in "
          f"{predict[3] - predict[2]:.2f} s meanwhile")
