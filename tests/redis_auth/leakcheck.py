"""A pytest plugin that fails the run when a password shows up in anything it logged (issue 9).

Register it in the top-level ``tests/conftest.py``::

    pytest_plugins = ["tests.redis_auth.leakcheck"]

What it searches, at the end of the session:

* every log record of the test process: a handler at DEBUG on the root logger
  (and on loggers that do not propagate, such as ``processhub``) writes them to
  a private file, messages, tracebacks and stack traces included;
* what pytest captured for each test (stdout, stderr, log) and each failure's report;
* the output files of every ``runhub`` node and worker the tests started: every
  ``*.log`` under the session's temporary directory (``tests.cluster.harness.Cluster``
  writes ``<tmp_path>/cluster<N>/<node>-<n>.log``), and under ``$TMPDIR/processhub-*``
  directories made during the session (clusters built without a ``log_dir``).

What it searches for: the passwords of ``tests/redis_auth/passwords.py`` (made fresh
for each run), the passwords in ``DATABASE_URL``, ``REDIS_URL`` and ``CELERY_BROKER_URL``,
and whatever a test passes to ``register_secret()``; each as written and percent-encoded.
A hit turns the exit status into 1 and lists the offending lines with the password
replaced by ``<PASSWORD:name>``. Secrets too short or too common to search for
(shorter than 8 characters, or a part of their URL's other text, like ``postgres``)
are named in the summary as not checked, never searched blindly.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

MIN_LENGTH = 8
MAX_REPORTED = 30
ENV_URLS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")

_registered: dict[str, str] = {}


def register_secret(value: str | None, name: str = "registered") -> None:
    """Search the run's output for ``value`` too (tests that make passwords of their own call this)."""
    if value:
        _registered[value] = name


@dataclass(frozen=True)
class Leak:
    where: str  # a file, "log record", or a test id and its report section
    line: str   # the offending line, secrets replaced


def url_secrets(url: str) -> list[str]:
    """The passwords a URL carries: its userinfo password and query parameters named like a password."""
    try:
        parts = urlsplit(url)
        found = [unquote(parts.password)] if parts.password else []
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query) if "password" in k.lower() or k.lower() in ("pwd", "passwd")]
    return [s for s in found if s]


def spellings(secret: str) -> set[str]:
    """How a secret may be written: as is, and percent-encoded (in a URL's userinfo or path)."""
    return {secret, quote(secret, safe=""), quote(secret)}


def checkable(secret: str, context: str = "") -> bool:
    """Whether searching for ``secret`` means anything: long enough, and not a part of its URL's other text."""
    if len(secret) < MIN_LENGTH:
        return False
    return not context or secret not in context.replace(secret, "", 1)


def mask_line(line: str, secrets: dict[str, str]) -> str:
    for secret, name in sorted(secrets.items(), key=lambda kv: -len(kv[0])):
        for spelling in sorted(spellings(secret), key=len, reverse=True):
            line = line.replace(spelling, f"<PASSWORD:{name}>")
    return line


def scan_lines(lines: Iterable[str], secrets: dict[str, str], where: str) -> Iterator[Leak]:
    """The leaks in ``lines``: each line holding any spelling of a secret, masked."""
    needles = [s for secret in secrets for s in spellings(secret)]
    for line in lines:
        if any(n in line for n in needles):
            yield Leak(where, mask_line(line.rstrip("\n"), secrets)[:500])


def scan_file(path: Path, secrets: dict[str, str]) -> Iterator[Leak]:
    try:
        with path.open(errors="replace") as lines:
            yield from scan_lines(lines, secrets, str(path))
    except OSError:
        return


def session_secrets(environ: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The secrets to search for (secret -> name) and the names of those that cannot be searched."""
    from tests.redis_auth import passwords

    environ = os.environ if environ is None else environ
    secrets: dict[str, str] = {}
    skipped: list[str] = []
    for name in ("REQUIREPASS", "ACL", "ADMIN", "TLS", "SENTINEL_MASTER", "SENTINEL", "WRONG"):
        secrets[getattr(passwords, name)] = f"tests.redis_auth.passwords.{name}"
    for var in ENV_URLS:
        url = environ.get(var, "")
        for secret in url_secrets(url):
            if checkable(secret, url):
                secrets[secret] = f"${var}"
            else:
                skipped.append(f"the password in ${var} (too short or too common to search for)")
    for secret, name in _registered.items():
        if checkable(secret):
            secrets[secret] = name
        else:
            skipped.append(f"{name} (shorter than {MIN_LENGTH} characters)")
    return secrets, skipped


class LeakCheck:
    """The plugin object: collects while the session runs, scans and judges at its end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.time()
        fd, name = tempfile.mkstemp(prefix="processhub-leakcheck-", suffix=".log")
        os.close(fd)
        self.path = Path(name)  # 0600, removed at the end: it may hold exactly what it looks for
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setLevel(logging.NOTSET)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.root_level = logging.root.level
        self.level = logging.getLevelName(config.getoption("leakcheck_level").upper())
        if not isinstance(self.level, int):
            raise pytest.UsageError(f"--leakcheck-level: not a log level: {config.getoption('leakcheck_level')}")
        self.reports: list[Leak] = []
        self.leaks: list[Leak] = []
        self.skipped: list[str] = []
        self.scanned: list[str] = []

    # ------------------------------------------------------------ collecting

    def attach(self) -> None:
        """Our handler on the root logger and on every logger that keeps its records to itself, at our level.

        Loggers must be lowered to that level for records to exist at all; so pytest's
        "Captured log" sections show them too (``--leakcheck-level=INFO`` for fewer).
        """
        if logging.root.level > self.level:
            logging.root.setLevel(self.level)
        if self.handler not in logging.root.handlers:
            logging.root.addHandler(self.handler)
        for logger in list(logging.root.manager.loggerDict.values()):
            if isinstance(logger, logging.Logger) and not logger.propagate and self.handler not in logger.handlers:
                logger.addHandler(self.handler)
                if logger.getEffectiveLevel() > self.level:
                    logger.setLevel(self.level)

    def detach(self) -> None:
        for logger in [logging.root, *logging.root.manager.loggerDict.values()]:
            if isinstance(logger, logging.Logger) and self.handler in logger.handlers:
                logger.removeHandler(self.handler)
        logging.root.setLevel(self.root_level)
        self.handler.close()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.attach()  # again: Django's LOGGING (dictConfig) may have replaced a logger's handlers since

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        secrets, _ = session_secrets()
        texts = [(f"{report.nodeid} ({report.when}): report", report.longreprtext or "")]
        texts += [(f"{report.nodeid}: {title}", content) for title, content in report.sections]
        for where, text in texts:
            for leak in scan_lines(text.splitlines(), secrets, where):
                if leak not in self.reports:  # a teardown report repeats the call's sections
                    self.reports.append(leak)

    # ------------------------------------------------------------ judging

    def output_files(self) -> list[Path]:
        files: list[Path] = []
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is not None:
            try:
                files += sorted(factory.getbasetemp().rglob("*.log"))
            except OSError:
                pass
        tmp = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
        for d in tmp.glob("processhub-*"):
            try:
                if d.is_dir() and d.stat().st_mtime >= self.started:
                    files += sorted(d.rglob("*.log"))
            except OSError:
                continue
        return [f for f in files if f != self.path]

    def judge(self) -> list[Leak]:
        secrets, self.skipped = session_secrets()
        self.handler.flush()
        leaks = list(self.reports)
        leaks += scan_file(self.path, secrets)
        for path in self.output_files():
            self.scanned.append(str(path))
            leaks += scan_file(path, secrets)
        self.leaks = leaks
        return leaks

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        try:
            leaks = self.judge()
        finally:
            self.detach()
            self.path.unlink(missing_ok=True)
        if leaks and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        if self.leaks:
            tr.write_sep("=", f"password leak check: {len(self.leaks)} line(s) carry a password", red=True, bold=True)
            for leak in self.leaks[:MAX_REPORTED]:
                tr.write_line(f"{leak.where}: {leak.line}")
            if len(self.leaks) > MAX_REPORTED:
                tr.write_line(f"... and {len(self.leaks) - MAX_REPORTED} more")
        else:
            tr.write_line(f"password leak check: no password in the log records, the test reports, or "
                          f"{len(self.scanned)} node/worker output files")
        for what in self.skipped:
            tr.write_line(f"password leak check: not checked: {what}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--leakcheck-level", default="DEBUG",
                     help="Lowest log level the password leak check records (default DEBUG).")


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin("processhub-leakcheck"):
        return
    check = LeakCheck(config)
    config.pluginmanager.register(check, "processhub-leakcheck")
    check.attach()
