"""SIGKILL a real agent process at seeded random moments; it must never pay for a completed call twice."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from agentshards import FakeLLMServer, inspect_agent
from agentshards._fakellm import serial_of

TESTS_DIR = Path(__file__).resolve().parent
CALLS = 10
MIN_KILLS = 21
DELAY_S = 0.05  # server think time: gives the kill a window while a request is in flight

CHILD = f"""
import json, sys
import openai  # preloaded by the harness so kill moments land in agent code, not in imports
import agentshards, sample_agents
print("ready", flush=True)
result = agentshards.run_agent(sample_agents.chat_calls, agent_id="crashy", data_dir=sys.argv[1], n={CALLS})
print(json.dumps(result), flush=True)
"""


def _spawn(data_dir: Path, base_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AWS_"))}
    env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=base_url, PYTHONPATH=str(TESTS_DIR))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], stdout=subprocess.PIPE, text=True,
                            env=env)


def _wait_ready(proc: subprocess.Popen[str], deadline_s: float = 30.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    assert ready, "child never became ready"
    assert proc.stdout.readline().strip() == "ready"


def _wait_for(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.001)


def _completed(data_dir: Path) -> int:
    if not (data_dir / "crashy.db").exists():
        return 0
    runs = inspect_agent(data_dir, "crashy").runs
    return len(runs[0].steps) if runs else 0


def test_sigkilled_agent_never_repeats_a_completed_call(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    data_dir = tmp_path / "data"
    kills = 0
    per_kill_extra: list[int] = []
    with FakeLLMServer(delay_s=DELAY_S) as llm:
        while kills < MIN_KILLS:
            done_before, requests_before = _completed(data_dir), llm.request_count
            proc = _spawn(data_dir, llm.base_url)
            _wait_ready(proc)
            if rng.random() < 0.25:
                window = 0.3  # anywhere in start-up: opening the shard, replaying, building the client
            else:
                # Anchor on the next request reaching the server, then kill in flight, between the answer
                # and its commit, or after the commit. Near the end, stay short so the run stays unfinished.
                _wait_for(lambda p=proc, n=requests_before: llm.request_count > n or p.poll() is not None)
                window = 1.6 * DELAY_S if done_before < CALLS - 3 else 0.9 * DELAY_S
            try:
                proc.wait(timeout=rng.uniform(0.0, window))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                requests = llm.request_count - requests_before
                completed = _completed(data_dir) - done_before
                per_kill_extra.append(requests - completed)
            else:
                raise AssertionError(f"the agent finished after only {kills} kills; shorten the kill window")
        proc = _spawn(data_dir, llm.base_url)
        _wait_ready(proc)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        result = json.loads(out)
        log = llm.requests

        # A re-run of the finished agent makes no request at all.
        before = llm.request_count
        again = _spawn(data_dir, llm.base_url)
        _wait_ready(again)
        out_again, _ = again.communicate(timeout=60)
        assert again.returncode == 0 and json.loads(out_again) == result
        assert llm.request_count == before

    assert kills >= MIN_KILLS
    assert [r["i"] for r in result] == list(range(CALLS))
    by_serial = {r.serial: r for r in log}
    serials = [serial_of(r["id"]) for r in result]
    assert len(set(serials)) == CALLS  # every serial in the result was issued exactly once
    for entry, serial in zip(result, serials, strict=True):
        prompt = f"call {entry['i']} of {CALLS}"
        assert by_serial[serial].body["messages"][0]["content"] == prompt
        # Once a call completed (its answer was recorded), it was never requested again.
        later = [r.serial for r in log if r.serial > serial and r.body["messages"][0]["content"] == prompt]
        assert later == [], f"call {entry['i']} was paid for again after completing: {later}"
    # Each kill costs at most one extra request (the one in flight), and the kills really hit calls in flight.
    assert all(0 <= extra <= 1 for extra in per_kill_extra), per_kill_extra
    assert len(log) - CALLS == sum(per_kill_extra) <= kills
    assert sum(per_kill_extra) >= 1, "no kill landed while a request was in flight"
    conn = apsw.Connection(str(data_dir / "crashy.db"))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    print(f"\n{kills} kills, {sum(per_kill_extra)} in-flight requests repeated, {len(log)} requests in all",
          file=sys.stderr)
