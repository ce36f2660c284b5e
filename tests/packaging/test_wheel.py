"""The package as a new user gets it: build the sdist and wheel, install the wheel into a fresh project, call a process.

Selected with ``-m packaging`` (``nox -s package``); needs PyPI (or a mirror pip is configured for) to install
the wheel's dependencies into the fresh virtualenv. Every subprocess is bounded by a timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import processhub

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# What the built distributions must carry, and what must stay in the repository.
MUST_HAVE = [
    "processhub/py.typed",
    "processhub/migrations/0001_initial.py",
    "processhub/templates/admin/processhub/overview.html",
    "processhub/management/commands/runhub.py",
]
MUST_NOT_HAVE = ("tests/", "hubproject/", "benchmarks/")
# Not copied into the build tree: local state that is no part of the source.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".nox", ".hypothesis", ".pytest_cache", ".ruff_cache",
                                    "artifacts", "dist", "build", "*.egg-info", "__pycache__", "*.pyc", "db.sqlite3*")

COUNTER = '''\
from processhub import HordeProcess


class Counter(HordeProcess):
    async def init(self, arg):
        self.count = 0

    async def handle_call(self, message):
        self.count += message.get("by", 1)
        return {"count": self.count, "node": self.node, "epoch": self.epoch}
'''

CALL = '''\
import json

import django
import processhub
from counters.processes import Counter

print(json.dumps({
    "first": Counter.call("x", {}),
    "second": Counter.call("x", {"by": 2}),
    "version": processhub.__version__,
    "django": django.get_version(),
    "file": processhub.__file__,
}))
'''


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 120) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def user_env(venv_dir: Path) -> dict:
    """The environment of a new project: this suite's Django settings, services and hub settings left out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROCESSHUB_", "DJANGO_")) and k not in ("DATABASE_URL", "REDIS_URL", "PYTHONPATH",
                                                                          "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(venv_dir / "bin"), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), built with ``python -m build`` from a copy of the source tree (the checkout stays clean)."""
    base = tmp_path_factory.mktemp("build")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "build", "--outdir", base / "dist", src], cwd=base, timeout=600)
    (sdist,) = (base / "dist").glob("processhub-*.tar.gz")
    (wheel,) = (base / "dist").glob("processhub-*.whl")
    return sdist, wheel


def test_fallback_version_is_pyprojects():
    # Installed or not (the suite runs from the checkout), the package reports pyproject's version.
    assert processhub.__version__ == VERSION


@pytest.mark.slow
def test_sdist_and_wheel_contents(dists):
    sdist, wheel = dists
    assert sdist.name == f"processhub-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        prefix = f"processhub-{VERSION}/"
        in_sdist = {name.removeprefix(prefix) for name in tar.getnames()}
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = set(whl.namelist())
    for names, what in ((in_sdist, "sdist"), (in_wheel, "wheel")):
        missing = [n for n in MUST_HAVE if n not in names]
        assert not missing, f"{what} lacks {missing}"
        extra = sorted(n for n in names if n.startswith(MUST_NOT_HAVE))
        assert not extra, f"{what} carries {extra}"
    assert {"README.md", "CHANGELOG.md", "pyproject.toml"} <= in_sdist
    assert all(n.startswith(("processhub/", f"processhub-{VERSION}.dist-info/")) for n in in_wheel)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_wheel_in_a_fresh_project_calls_a_process_embedded(dists, tmp_path):
    _, wheel = dists
    venv_dir = tmp_path / "venv"
    venv.create(venv_dir, with_pip=True)
    py = venv_dir / "bin" / "python"
    env = user_env(venv_dir)
    run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", wheel], cwd=tmp_path, env=env, timeout=900)

    # A new project, as the Django tutorial makes one, plus an app with a processes.py.
    site = tmp_path / "site"
    site.mkdir()
    run([venv_dir / "bin" / "django-admin", "startproject", "mysite", site], cwd=tmp_path, env=env)
    run([py, "manage.py", "startapp", "counters"], cwd=site, env=env)
    (site / "counters" / "processes.py").write_text(COUNTER)
    settings = site / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + '\nINSTALLED_APPS += ["processhub", "counters"]\n')

    run([py, "manage.py", "check"], cwd=site, env=env)
    run([py, "manage.py", "migrate", "--no-input"], cwd=site, env=env)
    out = run([py, "manage.py", "shell", "-c", CALL], cwd=site, env=env, timeout=180)
    result = json.loads(out.strip().splitlines()[-1])
    print(f"fresh project: processhub {result['version']} on Django {result['django']}, "
          f"Python {run([py, '-c', 'import platform; print(platform.python_version())'], cwd=site, env=env).strip()}")

    assert result["first"]["count"] == 1 and result["second"]["count"] == 3
    assert result["first"]["epoch"] == result["second"]["epoch"] == 1
    assert result["version"] == VERSION
    assert Path(result["file"]).is_relative_to(venv_dir), "the process ran from the checkout, not the wheel"
