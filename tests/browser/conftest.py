"""Headless Chromium windows and demo web servers (daphne, ASGI: WebSockets) for the live-demo browser tests.

Django's ``live_server`` speaks WSGI only, so each web server here is a real
``daphne hubproject.asgi:application`` subprocess on a free port, the same
application ``scripts/demo`` serves. Screenshots go to ``artifacts/screenshots/``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "artifacts" / "screenshots"
WAIT = 20  # seconds, for any page or element


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    """One daphne OS process serving the demo project."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.port, self.log = name, free_port(), log
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "hubproject.asgi:application"],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"web server {self.name} exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/live/state.json", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"web server {self.name} did not answer within {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture
def web_servers(tmp_path):
    """Start demo web servers: ``start(name, env)``; every one is stopped at teardown."""
    started: list[WebServer] = []

    def start(name: str, env: dict[str, str]) -> WebServer:
        server = WebServer(name, env, tmp_path / f"web-{name}.log")
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def windows(tmp_path):
    """Open headless Chromium windows, each a browser of its own (own cookies): ``open_window(name)``."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"headless browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} "
                    "missing: apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("headless browser test needs selenium (pip install selenium)")
    drivers = []

    def open_window(name: str):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1200,900",
                    # Background tabs keep their timers running: the room tab retries while the live tab is shown.
                    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                    f"--user-data-dir={tmp_path / f'chromium-{name}'}"):
            options.add_argument(arg)
        # An explicit driver path: Selenium Manager never tries to download a driver or a browser.
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(WAIT)
        drivers.append(driver)
        return driver

    SHOTS.mkdir(parents=True, exist_ok=True)
    yield open_window
    for driver in drivers:
        driver.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
