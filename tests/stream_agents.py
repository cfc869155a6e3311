"""Agent functions that stream LLM answers, for tests/test_stream.py (tests/ is on sys.path)."""

from __future__ import annotations

import os
from typing import Any

import agentshards

SEEN: list[dict[str, Any]] = []
"""What each execution saw: its chunks (the objects themselves) and the final answer, per execution."""
INTERRUPTED: list[str] = []


def _interrupt_once(agent: agentshards.Agent) -> None:
    """End the first execution of each agent in this process early (BaseException: the run stays open)."""
    if agent.agent_id not in INTERRUPTED:
        INTERRUPTED.append(agent.agent_id)
        raise KeyboardInterrupt


def stream_once(agent: agentshards.Agent, endpoint: str, tools: bool = False) -> str:
    """One streamed call, read to its end; interrupted after it the first time, so the next run replays it."""
    if endpoint == "chat":
        offered = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        chat = agent.llm.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                 messages=[{"role": "user", "content": "tell me about WAL mode"}],
                                                 **({"tools": offered} if tools else {}))
        chunks: list[Any] = list(chat)
        final: Any = chat.get_final_completion()
    else:
        offered = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
        events = agent.llm.responses.create(model="gpt-4o-mini", input="tell me about WAL mode", stream=True,
                                            **({"tools": offered} if tools else {}))
        chunks = list(events)
        final = events.get_final_response()
    SEEN.append({"chunks": chunks, "final": final})
    _interrupt_once(agent)
    return str(final.id)


def stream_calls(agent: agentshards.Agent, n: int) -> list[str]:
    """n streamed chat calls one after the other; each returns its assembled text."""
    texts = []
    for i in range(n):
        stream = agent.llm.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                   messages=[{"role": "user", "content": f"stream {i} of {n}"}])
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    return texts


def stop_early(agent: agentshards.Agent, how: str) -> str:
    """Read two chunks of a stream, then stop: by leaving a ``with`` block, by going on to the next step
    after a ``break``, or by a ``break`` as the run's last act."""
    stream = agent.llm.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "a long answer, please"}])
    seen: list[Any] = []
    if how == "with":
        with stream:
            for chunk in stream:
                seen.append(chunk)
                if len(seen) == 2:
                    break
    else:
        for chunk in stream:
            seen.append(chunk)
            if len(seen) == 2:
                break
    SEEN.append({"chunks": seen})
    if how == "run_end":
        return "stopped"
    agent.step("after", os.getpid)
    _interrupt_once(agent)
    return "stopped"


def rejected(agent: agentshards.Agent) -> int:
    """A streamed call the provider refuses; the agent handles the refusal and goes on."""
    try:
        agent.llm.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "x"}])
    except agentshards.LLMRequestRejected as exc:
        SEEN.append({"status": exc.status})
    _interrupt_once(agent)
    return len(SEEN)


def stream_without_usage(agent: agentshards.Agent) -> str:
    """The caller turns the usage chunk off: its choice stands, and the call is recorded without a price."""
    stream = agent.llm.chat.completions.create(model="gpt-4o-mini", stream=True,
                                               stream_options={"include_usage": False},
                                               messages=[{"role": "user", "content": "no usage"}])
    return stream.get_final_completion().choices[0].message.content or ""


def replicated_stream(agent: agentshards.Agent) -> str:
    """A streamed call with ``durability="replicated"``: it completes once the replica has it."""
    stream = agent.options(durability="replicated").llm.responses.create(model="gpt-4o-mini", input="kept",
                                                                          stream=True)
    return "".join(e.delta for e in stream if e.type == "response.output_text.delta")


# -- async agents: the same, with await and async for ------------------------------------------------------

async def astream_once(agent: agentshards.AsyncAgent, endpoint: str) -> str:
    """``stream_once`` for an async agent."""
    if endpoint == "chat":
        chat = await agent.llm.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "tell me about WAL mode"}])
        chunks: list[Any] = [chunk async for chunk in chat]
        final: Any = await chat.get_final_completion()
    else:
        events = await agent.llm.responses.create(model="gpt-4o-mini", input="tell me about WAL mode", stream=True)
        chunks = [event async for event in events]
        final = await events.get_final_response()
    SEEN.append({"chunks": chunks, "final": final})
    _interrupt_once(agent)
    return str(final.id)


async def astream_calls(agent: agentshards.AsyncAgent, n: int) -> list[str]:
    """``stream_calls`` for an async agent."""
    texts = []
    for i in range(n):
        stream = await agent.llm.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"stream {i} of {n}"}])
        texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
    return texts


async def astop_early(agent: agentshards.AsyncAgent, how: str) -> str:
    """``stop_early`` for an async agent: ``async with`` and break, or a break, then the next step or the end."""
    stream = await agent.llm.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "a long answer, please"}])
    seen: list[Any] = []
    if how == "with":
        async with stream:
            async for chunk in stream:
                seen.append(chunk)
                if len(seen) == 2:
                    break
    else:
        async for chunk in stream:
            seen.append(chunk)
            if len(seen) == 2:
                break
    SEEN.append({"chunks": seen})
    if how == "run_end":
        return "stopped"
    await agent.step("after", os.getpid)
    _interrupt_once(agent)
    return "stopped"


async def areplicated_stream(agent: agentshards.AsyncAgent) -> str:
    """``replicated_stream`` for an async agent."""
    stream = await agent.options(durability="replicated").llm.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "kept"}])
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
