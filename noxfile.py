"""The support matrix: the test-suite on every supported Python × Django pair.

Sessions (``nox -l`` lists them):

* ``full`` — the whole suite on the default set, Python 3.11 with requirements.txt (Django 5.2): what
  ``scripts/test`` runs.
* ``cell(python=..., django=...)`` — a bounded run on each other supported pair. By default it runs
  ``CELL_TESTS``: the unit tests (pure decisions, store fencing), the embedded-node tests (both in
  ``tests/unit``) and one 3-node cluster smoke file, leaving out anything marked slow, browser or chaos.
  Arguments after ``--`` replace that whole selection, so it survives test files being renamed:
  ``nox -s cell -- tests/unit tests/cluster/test_failover.py``.
  Python 3.11 × Django 6 is not a cell: Django 6.0 needs Python 3.12 or newer.
* ``package`` — ``tests/packaging`` on the newest Python: build the sdist and wheel, install the wheel
  into a fresh virtualenv and project, where pip picks the newest Django (6.x), call a process embedded.

Django "5.2" is requirements.txt as it is; "6.0" and "6" (the newest 6.x) replace its Django line.

Cells need PostgreSQL and Redis in DATABASE_URL / REDIS_URL, like scripts/test. One service set-up for
everything, as ``.ci/run`` does::

    source scripts/services.sh && .venv/bin/nox -s cell package
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nox

DEFAULT_PYTHON = "3.11"
PYTHONS = ["3.11", "3.12", "3.13"]
DJANGO = {"5.2": None, "6.0": "Django>=6.0,<6.1", "6": "Django>=6,<7"}
# The default set (3.11, 5.2) is the `full` session; Django 6 needs Python >= 3.12.
CELLS = [("3.12", "5.2"), ("3.12", "6.0"), ("3.13", "5.2"), ("3.13", "6")]
CELL_TESTS = ["-m", "not slow and not browser and not chaos", "tests/unit", "tests/cluster/test_cluster_basics.py"]
TEST_ENV = {"PROCESSHUB_TEST": "1"}

nox.options.error_on_missing_interpreters = True


def _pyenv_interpreters_first() -> None:
    # A pyenv shim (python3.12) fails unless that version is the active one: put each version's real
    # bin directory (newest patch release) ahead of the shims, so nox finds working interpreters.
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = []
    for want in PYTHONS:
        candidates = [p for p in versions.glob(f"{want}.*") if re.fullmatch(rf"{re.escape(want)}\.\d+", p.name)]
        if candidates:
            newest = max(candidates, key=lambda p: int(p.name.rsplit(".", 1)[1]))
            found.append(str(newest / "bin"))
    os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_pyenv_interpreters_first()


def _install(session: nox.Session, django: str) -> None:
    spec = DJANGO[django]
    if spec is None:
        session.install("-r", "requirements.txt")
    else:
        lines = Path("requirements.txt").read_text().splitlines()
        reqs = Path(session.create_tmp()) / "requirements.txt"
        reqs.write_text("\n".join([*(line for line in lines if not re.match(r"(?i)django\b", line)), spec, ""]))
        session.install("-r", str(reqs))
    session.run("python", "-c", "import django, platform; "
                "print('cell: Python', platform.python_version(), 'Django', django.get_version())", silent=False)


@nox.session(python=DEFAULT_PYTHON)
def full(session: nox.Session) -> None:
    """The whole suite on the default set (scripts/test runs the same in .venv)."""
    _install(session, "5.2")
    session.run("python", "-m", "pytest", *session.posargs, env=TEST_ENV)


@nox.session
@nox.parametrize("python,django", CELLS, ids=[f"{p}-django{d}" for p, d in CELLS])
def cell(session: nox.Session, django: str) -> None:
    """A bounded run on one Python × Django pair: CELL_TESTS, or the paths and options after --."""
    _install(session, django)
    session.run("python", "-m", "pytest", *(session.posargs or CELL_TESTS), env=TEST_ENV)


@nox.session(python=PYTHONS[-1])
def package(session: nox.Session) -> None:
    """The built wheel in a fresh virtualenv and project (tests/packaging)."""
    _install(session, "5.2")
    session.run("python", "-m", "pytest", "-m", "packaging", "-rP", "tests/packaging", *session.posargs, env=TEST_ENV)
