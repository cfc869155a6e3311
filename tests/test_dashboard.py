"""The dashboard in a real headless Chromium: one row per agent, live state changes, a timeline, no writes.

Chromium and ChromeDriver come from the system (Debian's chromium and chromium-driver, which CI installs);
Selenium drives them with the driver's path given, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentshards
from agentshards import RunConfig, run_agent
from agentshards._cli.dashboard import Dashboard
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
GATE = threading.Event()


def gated(agent: agentshards.Agent, n: int) -> int:
    """One step, then wait for the test to open the gate, then one more step."""
    agent.step("before", lambda: n)
    assert GATE.wait(60), "the test never opened the gate"
    agent.step("after", lambda: n + 1)
    return n


def two(agent: agentshards.Agent) -> str:
    agent.step("fetch", lambda: "data")
    agent.step("summarise", lambda: "summary")
    return "done"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        assert not os.environ.get("AGENTSHARDS_REQUIRE_BROWSER"), "CI must install chromium and chromium-driver"
        pytest.skip("skipped: no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _rows(driver: Any) -> dict[str, str]:
    script = ("return Array.from(document.querySelectorAll('#agents tbody tr'))"
              ".map(r => [r.dataset.agent, r.dataset.state])")
    return dict(driver.execute_script(script))


def _severe(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_rows_states_change_live_and_a_timeline(browser: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = RunConfig()
    run_agent(two, agent_id="done-1", data_dir=data, config=config)
    worker = threading.Thread(target=run_agent, args=(gated,), kwargs={"agent_id": "live-2", "data_dir": data,
                                                                       "config": config, "n": 2})
    GATE.clear()
    worker.start()
    try:
        _until(lambda: (data / "live-2.db").exists(), 10, "the live agent's shard")
        with Dashboard(data) as dashboard:
            browser.get(dashboard.url)
            _until(lambda: browser.execute_script("return document.body.dataset.ready") == "1", 10, "the page")
            browser.execute_script("window.__sameDocument = true")
            assert _until(lambda: _rows(browser) == {"done-1": "succeeded", "live-2": "running"}, 10,
                          "one row per agent with its state")
            GATE.set()
            worker.join(30)
            _until(lambda: _rows(browser).get("live-2") == "succeeded", 10, "the state change, without a reload")
            assert browser.execute_script("return window.__sameDocument") is True  # no reload happened
            browser.find_element("css selector", "tr[data-agent='done-1']").click()
            steps = _until(lambda: browser.execute_script(
                "return Array.from(document.querySelectorAll('#timeline rect[data-step]')).map(r => r.dataset.step)"),
                10, "the timeline")
            assert steps == ["fetch", "summarise"]
            assert _severe(browser) == []
    finally:
        GATE.set()
        worker.join(30)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_a_thousand_agents_are_ready_within_two_seconds_and_nothing_is_written(browser: Any,
                                                                               tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = RunConfig().shard
    for i in range(1000):
        agent_id = f"agent-{i:04d}"
        journal = Journal(open_shard(data, agent_id, config), agent_id)
        try:
            run = journal.begin_run("tests:agent", "{}", "digest")
            journal.record_step(run.id, "only", "step", '"x"')
            if i % 3 == 0:
                journal.finish_run(run.id, "succeeded", output_json='"x"')
        finally:
            journal.close()
    before = _files(data)
    with Dashboard(data) as dashboard:
        started = time.monotonic()  # includes the driver's own round trips, reported beside the page's figure
        browser.get(dashboard.url)
        _until(lambda: browser.execute_script(
            "return document.body.dataset.ready === '1' && document.querySelectorAll('#agents tbody tr').length"),
            10, "a thousand rows")
        ready_s = time.monotonic() - started
        ready_ms = int(browser.execute_script("return document.body.dataset.readyMs"))
        assert len(_rows(browser)) == 1000
        generated = browser.execute_script("return document.body.dataset.generated")
        _until(lambda: browser.execute_script("return document.body.dataset.generated") != generated, 10,
               "a refresh")
        browser.refresh()
        _until(lambda: browser.execute_script("return document.body.dataset.ready") == "1", 10, "the reload")
        assert _severe(browser) == []
    # From the start of navigation to a thousand rows drawn, by the page's own clock.
    assert ready_ms < 2000, f"page ready {ready_ms} ms after navigation ({ready_s:.2f}s through the driver)"
    assert _files(data) == before  # serving and refreshing wrote, created and removed nothing
    assert not os.path.exists(data / ".fleet")


def test_live_state_and_replication_lag_count_only_while_the_data_dir_is_held(tmp_path: Path) -> None:
    """What a running fleet publishes (its agents' states and the watchdog's replication lag) shows in
    status and on the page while the fleet holds the data dir, and is ignored once nobody does."""
    import fcntl
    import json

    from agentshards._fleet.fleet import publish_replication
    from agentshards._fleet.views import FleetView
    from agentshards._replication.replication import AgentReplicationStatus

    data = tmp_path / "data"
    run_agent(two, agent_id="a1", data_dir=data, config=RunConfig())
    (data / ".fleet").mkdir()
    (data / ".fleet" / "status.json").write_text(json.dumps({"pid": os.getpid(), "agents": {
        "a1": {"status": "restarting", "restarts": 2}}}))
    publish_replication(data, 1.0, [AgentReplicationStatus("a1", "replicating", 1.0, 2.0, 1.5, True)])
    view = FleetView(data)
    try:
        with open(data / "agentshards.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            (held,) = view.snapshot()["agents"]
            (data / ".fleet" / "status.json").write_text(json.dumps({"pid": os.getpid() + 1, "agents": {
                "a1": {"status": "restarting", "restarts": 2}}}))
            (other,) = view.snapshot()["agents"]  # written by another process than the owner: ignored
            fcntl.flock(lock, fcntl.LOCK_UN)
        (free,) = view.snapshot()["agents"]
    finally:
        view.close()
    assert (held["status"], held["restarts"], held["lag_s"]) == ("restarting", 2, 1.5)
    assert (free["status"], free["restarts"], free["lag_s"]) == ("succeeded", 0, None)
    assert (other["status"], other["restarts"], other["lag_s"]) == ("succeeded", 0, None)


def test_the_dashboard_answers_only_its_own_host_name(tmp_path: Path) -> None:
    """A page elsewhere that rebinds its DNS name to 127.0.0.1 must not read prompts and spend."""
    import urllib.error
    import urllib.request

    data = tmp_path / "data"
    run_agent(two, agent_id="a1", data_dir=data, config=RunConfig())
    with Dashboard(data) as dashboard:
        ok = urllib.request.urlopen(dashboard.url + "api/fleet", timeout=10)
        assert ok.status == 200
        rebound = urllib.request.Request(dashboard.url + "api/fleet", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(rebound, timeout=10)
        assert info.value.code == 403
