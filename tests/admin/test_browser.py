"""The admin in a real browser: headless Chromium logs in, reads the overview, filters, moves and drains.

Screenshots of every page land in ``artifacts/screenshots/`` (gitignored). Skips
when Debian's chromium / chromium-driver or selenium are missing.
"""
import os
from pathlib import Path

import pytest

from processhub.models import Node, NodeStatus, Process, ProcessStatus
from tests.cluster.harness import wait_for
from tests.conftest import needs_services
from tests.hubtest.processes import Echo

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
WAIT = 20  # seconds, for any page or element


@pytest.fixture
def browser(tmp_path):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"headless browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} "
                    "missing: apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("headless browser test needs selenium (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1600,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager never tries to download a driver or a browser.
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_admin_in_a_browser(cluster3, live_server, admin_user, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    for i in range(24):
        Echo.start(f"web{i}")
    wait = WebDriverWait(browser, WAIT)

    # Log in; the login page sends us on to the overview.
    browser.get(f"{live_server.url}/admin/login/?next=/admin/processhub/process/overview/")
    wait.until(ec.presence_of_element_located((By.ID, "id_username")))
    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys("password")
    shot(browser, "01-login")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # The overview: three live nodes whose counts add up, and the class table.
    wait.until(ec.presence_of_element_located((By.ID, "ph-nodes")))
    rows = {r.get_attribute("data-node"): r for r in browser.find_elements(By.CSS_SELECTOR, "tr.ph-node")}
    assert set(rows) == {"a", "b", "c"}
    shown = {name: int(r.find_element(By.CSS_SELECTOR, "a.ph-running").text) for name, r in rows.items()}
    assert shown == {name: Process.objects.filter(node__name=name, status="running").count() for name in shown}
    assert sum(shown.values()) == 24
    echo_row = browser.find_element(By.CSS_SELECTOR, f"tr.ph-class[data-label='{Echo.label}']")
    assert "24" in echo_row.text
    assert all("fresh" in r.text for r in rows.values())
    shot(browser, "02-overview")

    # Follow node a's count into the process list: filtered to a's running processes.
    source = max(shown, key=shown.get)
    rows[source].find_element(By.CSS_SELECTOR, "a.ph-running").click()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    listed = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(listed) == shown[source]
    assert all(f">{source}<" in r.get_attribute("innerHTML") for r in listed)
    shot(browser, "03-processes-filtered")

    # Move the first listed process to another node with the "move" action.
    target = next(n for n in ("a", "b", "c") if n != source)
    target_node = Node.objects.get(name=target, status=NodeStatus.UP)
    first = listed[0]
    pid = first.find_element(By.CSS_SELECTOR, "th a").text
    before = Process.objects.get(label=Echo.label, process_id=pid)
    first.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("move")
    Select(browser.find_element(By.NAME, "to_node")).select_by_value(target_node.pk)
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li.success")))
    assert f"moved to {target}" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    shot(browser, "04-after-move")
    after = Process.objects.select_related("node").get(pk=before.pk)
    assert (after.node.name, after.epoch) == (target, before.epoch + 1)
    assert wait_for(lambda: Echo.call(pid, {}), 10, "the moved process")["node"] == target

    # Drain node c from the node list: its processes go to a and b, c stays up as draining.
    browser.get(f"{live_server.url}/admin/processhub/node/?status__exact=up")
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    c = Node.objects.get(name="c", status=NodeStatus.UP)
    browser.find_element(By.CSS_SELECTOR, f"input.action-select[value='{c.pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("drain")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li.success")))
    wait_for(lambda: not Process.objects.filter(node=c, status=ProcessStatus.RUNNING).exists(), 20,
             "c to hand its processes away")
    assert Node.objects.get(pk=c.pk).status == NodeStatus.DRAINING and cluster3.nodes["c"].alive()
    assert Process.objects.filter(status=ProcessStatus.RUNNING, node__name__in=["a", "b"]).count() == 24
    browser.get(f"{live_server.url}/admin/processhub/node/")
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    assert "draining" in browser.find_element(By.ID, "result_list").text
    shot(browser, "05-nodes-after-drain")
    browser.get(f"{live_server.url}/admin/processhub/process/overview/")
    wait.until(ec.presence_of_element_located((By.ID, "ph-nodes")))
    c_row = browser.find_element(By.CSS_SELECTOR, "tr.ph-node[data-node='c']")
    assert "draining" in c_row.text and c_row.find_element(By.CSS_SELECTOR, "a.ph-running").text == "0"
    shot(browser, "06-overview-after-drain")
