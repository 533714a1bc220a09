""".dockerignore keeps the build context to what Dockerfile.gpu copies: every COPY source goes in,
the .venv, .git, tests, benchmark and local data stay out, and nothing else of the checkout is sent.
The patterns are read as Docker reads them (moby's patternmatcher: Go's filepath.Match per pattern,
`**` for any number of folders, a pattern that matches a folder matches what it holds, `!` lets a
path back in, and the last pattern that matches decides)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from test_service_dockerfile import instructions

ROOT = Path(__file__).resolve().parent.parent
DOCKERIGNORE = ROOT / ".dockerignore"
KEPT_OUT = (".venv/bin/python", ".venv-lock/bin/uv", "requirements.txt", ".git/HEAD", "tests/test_dockerignore.py",
            "bench/README.md", "local/demo/x.png",
            "docs/operations.md", "deploy/kubernetes/deployment.yaml", "Makefile", ".gitignore",
            "service/__pycache__/app.cpython-311.pyc", "orca_ml_endpoint.egg-info/PKG-INFO", ".pytest_cache/x")


def translate(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regular expression over a slash-separated path."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # `**/`: zero or more folders
                out += "(.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is an exception, pattern) per line, in order; comments and blank lines dropped."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if exception else line).lstrip("/")
        found.append((exception, translate(pattern)))
    return found


def excluded(path: str, text: str | None = None) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context."""
    parts = path.strip("/").split("/")
    verdict = False
    for exception, pattern in rules(DOCKERIGNORE.read_text() if text is None else text):
        if any(pattern.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not exception
    return verdict


def copy_sources() -> list[str]:
    sources = []
    for word, rest in instructions():
        if word == "COPY":
            *found, _ = shlex.split(rest)
            sources += [s for s in found if not s.startswith("--")]
    assert sources
    return sources


def checkout_files() -> list[str]:
    """The files of the checkout a build would see: tracked, and untracked but not ignored."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return [f for f in done.stdout.splitlines() if (ROOT / f).is_file()]


def test_the_matcher_reads_patterns_as_docker_does():
    text = "*\n!keep/\n**/__pycache__\n!keep/__pycache__/wanted.pyc\n/root-only.txt\n"
    assert excluded("anything.txt", text) and excluded("deep/er/file", text)  # the folder matches `*`
    assert not excluded("keep/a/b.py", text)
    assert excluded("keep/__pycache__/x.pyc", text) and excluded("keep/a/__pycache__/x.pyc", text)
    assert not excluded("keep/__pycache__/wanted.pyc", text)  # the last match decides
    assert excluded("root-only.txt", text)
    assert not excluded("a/b.txt", "a/*.py\n") and excluded("a/b.py", "a/*.py\n")
    assert not excluded("a/c/b.py", "a/*.py\n")  # `*` stops at a slash
    assert excluded("x/y/z.tmp", "**/*.tmp\n") and excluded("z.tmp", "**/*.tmp\n")
    assert excluded("file1", "file[0-9]\n") and not excluded("filex", "file[0-9]\n")


def test_every_copy_source_is_in_the_context():
    for source in copy_sources():
        assert not excluded(source), f"COPY {source}: left out by .dockerignore"
    files = checkout_files()
    for source in copy_sources():
        under = [f for f in files if f == source.rstrip("/") or f.startswith(source.rstrip("/") + "/")]
        assert under, f"COPY {source}: no file of the checkout"
        left_out = [f for f in under if excluded(f)]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"


def test_the_venv_git_tests_and_caches_stay_out():
    assert DOCKERIGNORE.exists(), "no .dockerignore: the whole checkout, .venv included, is the build context"
    for path in KEPT_OUT:
        assert excluded(path), f"{path} would be sent to the builder"


def test_nothing_but_what_is_copied_goes_in():
    sources = [s.rstrip("/") for s in copy_sources()]
    sent = [f for f in checkout_files() if not excluded(f)]
    stray = [f for f in sent if f != "Dockerfile.gpu" and not any(f == s or f.startswith(s + "/") for s in sources)]
    assert not stray, f"in the build context but never copied: {stray[:10]}"
