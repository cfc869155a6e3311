"""Agent functions for the fleet confirmation and fence tests, importable as ``confirm_agents:<name>``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import agentshards


def replicated_then_restored(agent: agentshards.Agent, n: int, source: str, scratch: str) -> list[Any]:
    """n replicated steps; right after each returns, restore the shard from the replica (from this worker)
    and report which of this run's steps the restored copy holds."""
    seen = []
    for i in range(n):
        agent.options(durability="replicated").step("rep", lambda i=i: {"i": i, "pid": os.getpid()})
        where = Path(scratch) / f"{agent.agent_id}-{i}"
        agentshards.restore_agent(agent.agent_id, where, source)
        (run,) = agentshards.inspect_agent(where, agent.agent_id).runs
        seen.append([step.name for step in run.steps])
    return seen


def replicated_error(agent: agentshards.Agent) -> dict[str, Any]:
    """One replicated step whose confirmation fails: what the agent sees."""
    try:
        agent.options(durability="replicated").step("rep", lambda: "recorded locally")
    except agentshards.ReplicationError as exc:
        return {"type": type(exc).__name__, "agent_id": exc.agent_id, "message": exc.message}
    return {"type": None}


def ticking(agent: agentshards.Agent, n: int, pause_s: float) -> int:
    """n small local steps, ``pause_s`` apart: a shard whose step count grows steadily."""
    for i in range(n):
        agent.step("tick", lambda i=i: i)
        time.sleep(pause_s)
    return n


def environ_then_replicated(agent: agentshards.Agent, n: int) -> dict[str, Any]:
    """What this worker's environment holds of AWS credentials, then n replicated steps."""
    for _ in range(n):
        agent.options(durability="replicated").step("rep", lambda: os.getpid())
    raw = Path("/proc/self/environ").read_bytes()  # what the process was started with
    environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    return {"aws": sorted(k for k in environ if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                      "AWS_SESSION_TOKEN", "AWS_PROFILE")),
            "canary": [k for k, v in environ.items() if "canary" in v]}


def llm_and_plain(agent: agentshards.Agent) -> str:
    """One LLM step and one plain step (their durability comes from the run's settings)."""
    answer = agent.llm.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    agent.step("plain", lambda: 1)
    return str(answer.id)
