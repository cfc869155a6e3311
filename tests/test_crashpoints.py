"""Seeded kills at each named crash point: after the intent commit, after the response, after the commit."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from agentshards import FakeLLMServer, inspect_agent
from agentshards._base.crashpoints import POINTS

from agent_process import completed_steps, finish_and_check, spawn_chat_agent, wait_ready

CALLS = 10
KILLS_PER_POINT = 5
EXPECTED_EXTRA = {"after_intent": 0, "after_response": 1, "after_commit": 0}


@pytest.mark.parametrize("point", POINTS)
def test_kills_at_crash_point(tmp_path: Path, point: str) -> None:
    rng = random.Random(f"crashpoints-{point}")
    data_dir = tmp_path / "data"
    agent_id = f"cp-{point.replace('_', '-')}"
    extras = []
    with FakeLLMServer() as llm:
        for _ in range(KILLS_PER_POINT):
            done, requests = completed_steps(data_dir, agent_id), llm.request_count
            proc = spawn_chat_agent(data_dir, llm.base_url, agent_id, CALLS,
                                    {"AGENTSHARDS_TEST_CRASH": f"{point}@{rng.randint(1, 2)}"})
            wait_ready(proc)
            assert proc.wait(timeout=60) == -signal.SIGKILL
            extras.append((llm.request_count - requests) - (completed_steps(data_dir, agent_id) - done))
            in_flight = inspect_agent(data_dir, agent_id).runs[-1].in_flight
            # A kill between the intent commit and the step commit leaves exactly one visible in-flight step.
            assert len(in_flight) == (0 if point == "after_commit" else 1)
        finish_and_check(data_dir, llm, agent_id, CALLS)
    assert extras == [EXPECTED_EXTRA[point]] * KILLS_PER_POINT
