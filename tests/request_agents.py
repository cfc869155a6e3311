"""Agents for the operator's requests through the prefix (importable as ``request_agents:<name>``)."""

from __future__ import annotations

import time
from pathlib import Path

import agentshards


def pause(seconds: float, i: int) -> int:
    time.sleep(seconds)
    return i


def slow_steps(agent: agentshards.Agent, n: int, seconds: float) -> int:
    """n steps of ``seconds`` each: long enough for an operator to act while it runs."""
    return sum(agent.step(f"s{i}", pause, seconds, i) for i in range(n))


def fails_until(agent: agentshards.Agent, marker: str) -> str:
    """One step, then fails unless ``marker`` exists (an operator fixes the cause, then retries)."""
    done = agent.step("prepare", lambda: "prepared")
    if not Path(marker).exists():
        raise ValueError(f"{marker} is missing")
    return str(agent.step("finish", lambda: f"{done} and finished"))


def swallows(agent: agentshards.Agent, n: int, seconds: float) -> str:
    """Agent code that catches everything around its steps (the refusal of a stopping worker included)."""
    done = 0
    for i in range(n):
        try:
            done += agent.step(f"s{i}", pause, seconds, 1)
        except Exception:
            continue
    return f"{done} steps"
