"""Helpers for the scripts in this folder: agent functions (importable, so their targets are
module:function) and the interpreter-start timer."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import agentshards

INTERRUPT_AT_END = False  # set by a benchmark to leave the run open with every call recorded


def chat_agent(agent: agentshards.Agent, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(n):
        completion = agent.llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"step {i}: " + "x" * 200}])
        ids.append(completion.id)
    if INTERRUPT_AT_END:
        raise KeyboardInterrupt
    return ids



def step_agent(agent: agentshards.Agent, n: int) -> int:
    total = 0
    for i in range(n):
        total += agent.step("work", _payload, i)["i"]
    return total


def _payload(i: int) -> dict[str, Any]:
    return {"i": i, "blob": "y" * 1000}


FIRST_NEW_STEP: list[float] = []


def chat_then_step(agent: agentshards.Agent, n: int) -> int:
    """n LLM calls, then a plain step whose first execution stamps the time (the replay benchmark)."""
    chat_agent(agent, n)
    agent.step("after", _stamp)
    return n


def _stamp() -> float:
    FIRST_NEW_STEP.append(time.perf_counter())
    return 0.0


def interpreter_ms(code: str, repeat: int) -> float:
    """Median wall time of a fresh ``python -c code``: the baseline for import costs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


RUN_STARTED: list[float] = []
KILL_AT: list[int] = []


def kill_at_step(agent: agentshards.Agent, n: int) -> int:
    """n plain steps; SIGKILLs its own process just before step KILL_AT[0] (resume benchmark)."""
    import os
    import signal

    recorded = len(agent.completed_step_names)  # once: the property copies the names on every call
    for i in range(n):
        if KILL_AT and i == KILL_AT[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        if not FIRST_NEW_STEP and recorded and i >= recorded:
            FIRST_NEW_STEP.append(time.perf_counter())
        agent.step("s", _payload, i)
    return n


def periodic_llm(agent: agentshards.Agent, period: float, calls: int) -> int:
    """One LLM step every ``period`` seconds, ``calls`` times (the fleet-density benchmark's load)."""
    for i in range(calls):
        agent.llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"tick {i}"}])
        time.sleep(period)
    return calls


def scheduled_llm(agent: agentshards.Agent, period: float, calls: int, offset: float, marks: str) -> list[list[float]]:
    """One LLM step every ``period`` seconds on a fixed schedule (start + offset + i * period), ``calls`` times
    (the workers benchmark's thread-hosted load). Returns [due, started, ended] wall-clock times per call: how
    late a call starts against its schedule is the agent's step lag. Touches ``marks/started/<id>`` when its
    code begins and ``marks/ended/<id>`` when it is done, so the benchmark can sample while every agent runs."""
    Path(marks, "started", agent.agent_id).touch()
    first = time.time() + offset
    timings: list[list[float]] = []
    for i in range(calls):
        due = first + i * period
        time.sleep(max(0.0, due - time.time()))
        started = time.time()
        agent.llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"tick {i}"}])
        timings.append([due, started, time.time()])
    Path(marks, "ended", agent.agent_id).touch()
    return timings
