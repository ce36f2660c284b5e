"""The live demo in real browsers (issue 12): two headless Chromium windows on one chat room.

A message typed in one window appears in the other within one second, with the
embedded hub (one daphne, the demo's own settings) and on a 3-node cluster with
two web servers (one window on each). On the cluster, the room's node is killed
with the live page's staff button (SIGKILL): both windows keep working and the
history is intact. Screenshots: ``artifacts/screenshots/live-*.png``.
"""
import os
import subprocess
import sys
import time
import uuid

import pytest

from processhub.models import Process
from tests.cluster.harness import wait_for
from tests.conftest import needs_services

from .conftest import ROOT, WAIT, shot

pytestmark = [pytest.mark.browser]

DELIVERY = 1.0  # seconds from pressing Enter in one window to the message showing in the other


def by():
    from selenium.webdriver.common.by import By

    return By


def until(driver, condition, timeout: float = WAIT, what: str = ""):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The live page redraws its tables every second: an element found a moment ago may be gone.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition, what)


def node_of(driver, process_id: str) -> str | None:
    """The node the live page shows for a process (read in one step: the rows are redrawn every second)."""
    return driver.execute_script(
        "const row = [...document.querySelectorAll('tr.process')].find(r => r.dataset.id === arguments[0]);"
        "return row ? row.dataset.node : null;", process_id)


def open_page(driver, url: str) -> None:
    driver.get(url)
    until(driver, lambda d: d.find_element(by().ID, "socket").text == "live", what=f"the socket of {url}")


def messages(driver) -> list[str]:
    """The texts of the messages the room confirmed, in page order (not those still being sent)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#messages li.msg:not(.pending) .text')].map(e => e.textContent)")


def post(driver, text: str) -> float:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(by().ID, "text")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    return time.monotonic()


def shows(driver, text: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` until ``driver`` shows ``text`` as a confirmed message."""
    deadline = since + timeout
    while True:
        if text in messages(driver):
            return time.monotonic() - since
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not shown within {timeout}s; the window shows {messages(driver)}")
        time.sleep(0.02)


def exchange(one, two, text: str, timeout: float = DELIVERY) -> float:
    """Post ``text`` in window ``one``; both windows show it, ``two`` within ``timeout``."""
    elapsed = shows(two, text, post(one, text), timeout)
    shows(one, text, time.monotonic(), WAIT)
    return elapsed


# ------------------------------------------------------------------ embedded: scripts/demo's shape


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROCESSHUB_", "DJANGO_", "CELERY_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "DJANGO_SETTINGS_MODULE": "hubproject.settings", "PYTHONUNBUFFERED": "1", **extra}


def test_embedded_two_windows_chat_live(windows, web_servers, tmp_path):
    env = demo_env(SQLITE_PATH=str(tmp_path / "demo.sqlite3"))
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True,
                   timeout=180)
    web = web_servers("embedded", env)
    one, two = windows("one"), windows("two")
    room = f"lobby-{uuid.uuid4().hex[:6]}"
    for window in (one, two):
        open_page(window, f"{web.url}/room/{room}/")
    two.find_element(by().ID, "nick").send_keys("bob")

    assert exchange(one, two, "hello from one") < DELIVERY
    assert exchange(two, one, "hi from two") < DELIVERY
    assert exchange(one, two, "third") < DELIVERY
    assert messages(one) == messages(two) == ["hello from one", "hi from two", "third"]
    assert one.find_element(by().ID, "node").text == "embedded"
    shot(one, "live-01-embedded-room-window-one")
    shot(two, "live-02-embedded-room-window-two")

    # A reload reads the history from the room.
    two.refresh()
    open_page(two, f"{web.url}/room/{room}/")
    assert messages(two) == ["hello from one", "hi from two", "third"]

    # The counter: node and epoch on the page, a change pushed to the other window.
    counter = f"visits-{uuid.uuid4().hex[:6]}"
    for window in (one, two):
        open_page(window, f"{web.url}/counter/{counter}/")
    one.find_element(by().ID, "incr").click()
    until(two, lambda d: d.find_element(by().ID, "count").text == "1", DELIVERY * 2, "the pushed count")
    assert (two.find_element(by().ID, "node").text, two.find_element(by().ID, "epoch").text) == ("embedded", "1")
    one.find_element(by().ID, "crash").click()  # an error frame on the page; the restart is pushed with its epoch
    until(one, lambda d: "ProcessCrashed" in d.find_element(by().ID, "live-error").text, what="the error frame")
    until(two, lambda d: d.find_element(by().ID, "epoch").text == "2", what="the restarted counter's epoch")
    shot(one, "live-03-embedded-counter")

    # The live page lists the node and both processes.
    one.get(f"{web.url}/live/")
    until(one, lambda d: node_of(d, room) == "embedded", what="the room on the live page")
    until(one, lambda d: d.find_element(by().CSS_SELECTOR, "tr.node[data-node='embedded'] td.status").text == "up")
    assert not one.find_elements(by().CSS_SELECTOR, "button.kill")  # off unless scripts/demo cluster
    shot(one, "live-04-embedded-live-page")


# ------------------------------------------------------------------ a 3-node cluster, two web servers


@needs_services
@pytest.mark.cluster
def test_cluster_two_web_servers_and_a_killed_room_node(cluster3, admin_user, windows, web_servers):
    env = {**cluster3.env(), "DJANGO_DEBUG": "1", "DEMO_KILL_NODES": "1"}
    web1, web2 = web_servers("w1", env), web_servers("w2", env)
    one, two = windows("one"), windows("two")
    room = f"ops-{uuid.uuid4().hex[:6]}"

    # Window one: staff (it gets the kill button), on web server 1; window two: a guest on web server 2.
    one.get(f"{web1.url}/admin/login/?next=/room/{room}/")
    until(one, lambda d: d.find_element(by().ID, "id_username"))
    one.find_element(by().ID, "id_username").send_keys("admin")
    one.find_element(by().ID, "id_password").send_keys("password")
    one.find_element(by().CSS_SELECTOR, "input[type=submit]").click()
    until(one, lambda d: d.find_element(by().ID, "socket").text == "live", what="the room after login")
    open_page(two, f"{web2.url}/room/{room}/")
    two.find_element(by().ID, "nick").send_keys("bob")

    sent = ["before one", "before two", "before three"]
    assert exchange(one, two, sent[0]) < DELIVERY
    assert exchange(two, one, sent[1]) < DELIVERY
    assert exchange(one, two, sent[2]) < DELIVERY
    row = Process.objects.select_related("node").get(label="demo.ChatRoom", process_id=room)
    victim, epoch = row.node.name, row.epoch
    assert one.find_element(by().ID, "node").text == two.find_element(by().ID, "node").text == victim
    shot(one, "live-05-cluster-room-web1")
    shot(two, "live-06-cluster-room-web2")

    # The live page (a second tab of window one) shows the room on its node; staff kill that node.
    room_tab = one.current_window_handle
    one.switch_to.new_window("tab")
    one.get(f"{web1.url}/live/")
    until(one, lambda d: node_of(d, room) == victim, what="the room's row on the live page")
    shot(one, "live-07-cluster-live-before-kill")
    until(one, lambda d: d.find_element(by().CSS_SELECTOR, f"tr.node[data-node='{victim}'] button.kill").click()
          or True, what="the kill button")
    wait_for(lambda: not cluster3.nodes[victim].alive(), 10, f"node {victim} to die of the button's SIGKILL")
    assert cluster3.nodes[victim].popen.returncode == -9
    moved_to = until(one, lambda d: (node := node_of(d, room)) not in (None, "", victim) and node,
                     what="the room to move to a live node")
    shot(one, "live-08-cluster-live-after-kill")

    # Both windows carry on: the room pushed its new activation; posts go through, the history is whole.
    one.switch_to.window(room_tab)
    for window in (one, two):
        until(window, lambda d: d.find_element(by().ID, "node").text == moved_to, what="the room's new node")
    exchange(one, two, "after one", timeout=WAIT)  # the first post may still meet the end of the takeover
    assert exchange(two, one, "after two") < DELIVERY
    assert exchange(one, two, "after three") < DELIVERY
    everything = [*sent, "after one", "after two", "after three"]
    assert messages(one) == messages(two) == everything
    assert Process.objects.get(label="demo.ChatRoom", process_id=room).epoch > epoch
    two.refresh()  # the history the new activation read back (fenced writes) and was handed
    open_page(two, f"{web2.url}/room/{room}/")
    assert messages(two) == everything
    shot(one, "live-09-cluster-room-after-takeover-web1")
    shot(two, "live-10-cluster-room-after-takeover-web2")
