"""The agent of scripts/bench_confirm.py (importable, so its target is module:function)."""

from __future__ import annotations

import random
import time

import agentshards


def timed_llm(agent: agentshards.Agent, period: float, calls: int) -> list[list[float]]:
    """``calls`` LLM steps, one every ``period`` seconds (the first at a random point of the first period, so
    a fleet's steps spread out); returns [wall-clock start, latency in ms] per step, as agent code sees it."""
    time.sleep(random.uniform(0, period))
    out = []
    for i in range(calls):
        wall, start = time.time(), time.perf_counter()
        agent.llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"tick {i}"}])
        out.append([wall, (time.perf_counter() - start) * 1000])
        time.sleep(period)
    return out
