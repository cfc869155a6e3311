"""Async agent functions the tests run, importable as ``async_agents:<name>`` (tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
from typing import Any

import agentshards

CALLS: list[str] = []  # real executions of plain steps in this process
OBSERVED: list[str] = []  # what step coroutines saw (e.g. their cancellation)
PROMPT_SUFFIX: list[str] = [""]  # changes llm#2's prompt between runs: "the code changed"
INTERRUPT_ONCE: list[str] = []  # agent ids whose first execution is interrupted


class Interrupt(BaseException):
    """Stands for a crash: not an Exception, so the run stays open and the next call resumes it."""


async def record(tag: str, value: Any = None) -> Any:
    await asyncio.sleep(0)
    CALLS.append(tag)
    return value if value is not None else {"tag": tag}


def record_sync(tag: str) -> str:
    CALLS.append(tag)
    return tag


async def chat_calls(agent: agentshards.AsyncAgent, n: int) -> list[dict[str, Any]]:
    """n sequential chat calls, each prompt naming its index; returns id and content of each."""
    out = []
    for i in range(n):
        completion = await agent.llm.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": f"call {i} of {n}"}], user=agent.agent_id)
        out.append({"i": i, "id": completion.id, "content": completion.choices[0].message.content})
    return out


async def mixed(agent: agentshards.AsyncAgent, n: int) -> dict[str, Any]:
    """LLM calls (chat and responses), an async and a sync plain step; interrupted once after them when asked."""
    chats = [await agent.llm.chat.completions.create(model="gpt-4o-mini",
                                                     messages=[{"role": "user", "content": f"q{i}"}])
             for i in range(n)]
    response = await agent.options(name="answer").llm.responses.create(model="gpt-4o-mini", input="hello")
    plain = await agent.step("plain", record, "plain", {"v": 1})
    sync = await agent.step("sync", record_sync, "sync")
    OBSERVED.append(chats[0].model_dump_json())
    if agent.agent_id in INTERRUPT_ONCE:
        INTERRUPT_ONCE.remove(agent.agent_id)
        raise Interrupt
    last = await agent.llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "z"}])
    return {"chats": [c.id for c in chats], "response": response.id, "plain": plain, "sync": sync, "last": last.id}


async def gathered(agent: agentshards.AsyncAgent, named: bool) -> list[Any]:
    """Three overlapping steps from asyncio.gather: unnamed ones share a base name and get numbered."""
    async def fetch(i: int) -> Any:
        await asyncio.sleep(0.01 * (3 - i))  # finish in reverse order: completion order is not call order
        return {"i": i, "key": agent.idempotency_key()}

    return list(await asyncio.gather(*(agent.step(f"fetch-{i}" if named else "fetch", fetch, i) for i in range(3))))


async def gathered_llm(agent: agentshards.AsyncAgent) -> list[str]:
    """Two unnamed LLM calls at once: their numbers would depend on timing."""
    calls = [agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])
             for i in range(2)]
    return [c.id for c in await asyncio.gather(*calls)]


async def nested(agent: agentshards.AsyncAgent) -> Any:
    async def outer() -> Any:
        return await agent.step("inner", record, "inner")

    return await agent.step("outer", outer)


async def _slow_observed(seconds: float) -> str:
    OBSERVED.append("started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        OBSERVED.append("cancelled")
        raise
    return "done"


async def slow_step(agent: agentshards.AsyncAgent, seconds: float, timeout_s: float) -> Any:
    return await agent.options(timeout_s=timeout_s).step("slow", _slow_observed, seconds)


async def one_call(agent: agentshards.AsyncAgent, timeout_s: float | None = None) -> str:
    completion = await agent.options(timeout_s=timeout_s).llm.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hello"}])
    return completion.id


async def priced_calls(agent: agentshards.AsyncAgent, n: int) -> list[str]:
    return [(await agent.llm.chat.completions.create(model="gpt-4o-mini",
                                                     messages=[{"role": "user", "content": f"p{i}"}])).id
            for i in range(n)]


async def drifting(agent: agentshards.AsyncAgent) -> list[str]:
    """llm#1's prompt depends on a module global, so a test can change 'the code' between runs."""
    first = await agent.llm.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a" + PROMPT_SUFFIX[0]}])
    if agent.agent_id in INTERRUPT_ONCE:
        INTERRUPT_ONCE.remove(agent.agent_id)
        raise Interrupt
    second = await agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
    return [first.id, second.id]


async def async_generator_agent(agent: agentshards.AsyncAgent) -> Any:
    yield None


async def where(agent: agentshards.AsyncAgent, n: int) -> dict[str, Any]:
    """n chat calls, then where the agent ran: its process and thread (a worker hosts async agents on one loop)."""
    import os
    import threading

    for i in range(n):
        await agent.llm.chat.completions.create(model="m", user=agent.agent_id,
                                                messages=[{"role": "user", "content": f"call {i} of {n}"}])
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


async def fails(agent: agentshards.AsyncAgent, message: str) -> None:
    await agent.step("before", record, "before")
    raise ValueError(message)


async def replicated(agent: agentshards.AsyncAgent, n: int) -> list[Any]:
    return [await agent.options(durability="replicated").step("rep", record, f"rep-{i}", {"i": i}) for i in range(n)]
