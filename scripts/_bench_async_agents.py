"""Async agent functions for scripts/bench_async.py and scripts/bench_workers.py (importable, so their targets
are module:function)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import agentshards

PROMPT = "x" * 200
STARTED: list[float] = []  # time.perf_counter() when each periodic agent started running its code


async def raw_vs_durable(agent: agentshards.AsyncAgent, n: int, base_url: str) -> dict[str, list[float]]:
    """n rounds of one raw AsyncOpenAI call then one durable call (same size, same server), timed in ms."""
    import openai

    raw = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0)
    timings: dict[str, list[float]] = {"raw": [], "durable": []}
    try:
        for i in range(n):
            started = time.perf_counter()
            await raw.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": f"raw {i}: {PROMPT}"}])
            timings["raw"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await agent.llm.chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": f"dur {i}: {PROMPT}"}])
            timings["durable"].append((time.perf_counter() - started) * 1000)
    finally:
        await raw.close()
    return timings


async def periodic(agent: agentshards.AsyncAgent, period: float, calls: int, offset: float) -> int:
    """One durable LLM step every ``period`` seconds, ``calls`` times, starting ``offset`` seconds in."""
    STARTED.append(time.perf_counter())
    await asyncio.sleep(offset)
    for i in range(calls):
        await agent.llm.chat.completions.create(model="gpt-4o-mini",
                                                messages=[{"role": "user", "content": f"tick {i}: {PROMPT}"}])
        await asyncio.sleep(period)
    return calls


async def periodic_raw(client: object, period: float, calls: int, offset: float) -> int:
    """The same load as ``periodic`` with raw AsyncOpenAI calls and no journal: the baseline."""
    STARTED.append(time.perf_counter())
    await asyncio.sleep(offset)
    for i in range(calls):
        await client.chat.completions.create(model="gpt-4o-mini",  # type: ignore[attr-defined]
                                             messages=[{"role": "user", "content": f"tick {i}: {PROMPT}"}])
        await asyncio.sleep(period)
    return calls


async def scheduled_llm(agent: agentshards.AsyncAgent, period: float, calls: int, offset: float,
                        marks: str) -> list[list[float]]:
    """``_bench_agents.scheduled_llm`` as an ``async def`` agent (hosted as a task on its worker's event loop):
    the same schedule, the same calls, the same [due, started, ended] times and start/end marks."""
    Path(marks, "started", agent.agent_id).touch()  # a file create: microseconds, not worth a thread hop
    first = time.time() + offset
    timings: list[list[float]] = []
    for i in range(calls):
        due = first + i * period
        await asyncio.sleep(max(0.0, due - time.time()))
        started = time.time()
        await agent.llm.chat.completions.create(model="gpt-4o-mini",
                                                messages=[{"role": "user", "content": f"tick {i}"}])
        timings.append([due, started, time.time()])
    Path(marks, "ended", agent.agent_id).touch()
    return timings
