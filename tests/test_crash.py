"""SIGKILL a real agent process at seeded random moments; it must never pay for a completed call twice."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agentshards import FakeLLMServer

from agent_process import completed_steps, finish_and_check, spawn_chat_agent, wait_ready

AGENT = "crashy"
CALLS = 10
MIN_KILLS = 21
DELAY_S = 0.05  # server think time: gives the kill a window while a request is in flight


def _wait_for(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.001)


def test_sigkilled_agent_never_repeats_a_completed_call(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    data_dir = tmp_path / "data"
    kills = 0
    per_kill_extra: list[int] = []
    with FakeLLMServer(delay_s=DELAY_S) as llm:
        while kills < MIN_KILLS:
            done_before, requests_before = completed_steps(data_dir, AGENT), llm.request_count
            proc = spawn_chat_agent(data_dir, llm.base_url, AGENT, CALLS)
            wait_ready(proc)
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
                per_kill_extra.append(requests - (completed_steps(data_dir, AGENT) - done_before))
            else:
                raise AssertionError(f"the agent finished after only {kills} kills; shorten the kill window")
        _, log = finish_and_check(data_dir, llm, AGENT, CALLS)

    # Each kill costs at most one extra request (the one in flight), and the kills really hit calls in flight.
    assert all(0 <= extra <= 1 for extra in per_kill_extra), per_kill_extra
    assert len(log) - CALLS == sum(per_kill_extra) <= kills
    assert sum(per_kill_extra) >= 1, "no kill landed while a request was in flight"
    print(f"\n{kills} kills, {sum(per_kill_extra)} in-flight requests repeated, {len(log)} requests in all",
          file=sys.stderr)
