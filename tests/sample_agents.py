"""Agent functions the tests run, importable as ``sample_agents:<name>`` (tests/ is on sys.path)."""

from __future__ import annotations

import os
import threading
from typing import Any

import agentshards

CALLS: list[str] = []  # records real executions of plain steps in this process


def record_call(tag: str, value: Any = None) -> Any:
    CALLS.append(tag)
    return value if value is not None else {"tag": tag, "pid": os.getpid()}


def chat_calls(agent: agentshards.Agent, n: int) -> list[dict[str, Any]]:
    """n sequential chat calls, each prompt naming its index; returns id and content of each."""
    out = []
    for i in range(n):
        completion = agent.llm.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": f"call {i} of {n}"}])
        out.append({"i": i, "id": completion.id, "content": completion.choices[0].message.content})
    return out


def two_steps(agent: agentshards.Agent, x: int) -> dict[str, Any]:
    a = agent.step("double", record_call, f"double-{x}", {"v": x * 2})
    b = agent.step("double", record_call, f"double-again-{x}", {"v": a["v"] * 2})
    return {"a": a, "b": b}


def returns_tuple(agent: agentshards.Agent) -> Any:
    return agent.step("pair", lambda: (1, 2))


def returns_set(agent: agentshards.Agent) -> Any:
    return agent.step("bad", lambda: {1, 2})


def returns_object(agent: agentshards.Agent) -> Any:
    return object()


def raises(agent: agentshards.Agent, message: str) -> None:
    agent.step("before", record_call, "before-raise")
    raise RuntimeError(message)


def concurrent_unnamed(agent: agentshards.Agent) -> None:
    """Two threads make unnamed LLM calls that overlap: numbering would depend on timing."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            agent.step("warmup-" + threading.current_thread().name, lambda: None)
            barrier.wait()
            agent.step("same", _slow, 0.3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"t{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def concurrent_named(agent: agentshards.Agent) -> list[Any]:
    barrier = threading.Barrier(3)
    results: list[Any] = [None] * 3

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = agent.step(f"fetch-{i}", _slow, 0.1, i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def nested(agent: agentshards.Agent) -> Any:
    return agent.step("outer", lambda: agent.step("inner", lambda: 1))


def _slow(seconds: float, value: Any = None) -> Any:
    threading.Event().wait(seconds)
    return value


def not_module_level() -> Any:
    def inner(agent: agentshards.Agent) -> None:
        return None

    return inner


def two_steps_then_interrupt(agent: agentshards.Agent, x: int) -> dict[str, Any]:
    """Like two_steps, but the first execution is interrupted (BaseException) after the first step."""
    a = agent.step("double", record_call, f"double-{x}", {"v": x * 2})
    if "double-again-" + str(x) not in CALLS and CALLS.count(f"double-{x}") == 1 and not _INTERRUPTED:
        _INTERRUPTED.append(True)
        raise KeyboardInterrupt
    b = agent.step("double", record_call, f"double-again-{x}", {"v": a["v"] * 2})
    return {"a": a, "b": b}


_INTERRUPTED: list[bool] = []


def echo_inputs(agent: agentshards.Agent, a: Any, b: Any) -> Any:
    return agent.step("echo", record_call, "echo", {"a": a, "b": b})


def named_step(agent: agentshards.Agent, name: Any) -> Any:
    agent.step(name, record_call, "named")
    return name


SEEN: list[Any] = []


def llm_then_interrupt(agent: agentshards.Agent) -> None:
    completion = agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    SEEN.append(completion)
    if len(SEEN) == 1:
        raise KeyboardInterrupt


def streaming_call(agent: agentshards.Agent) -> None:
    agent.llm.chat.completions.create(model="m", messages=[], stream=True)


def embeddings_call(agent: agentshards.Agent) -> None:
    agent.llm.embeddings.create(model="m", input="x")


def named_llm_calls(agent: agentshards.Agent) -> None:
    msgs = [{"role": "user", "content": "x"}]
    agent.options(name="plan").llm.chat.completions.create(model="m", messages=msgs)
    agent.llm.chat.completions.create(model="m", messages=msgs)
    agent.options(name="plan").llm.chat.completions.create(model="m", messages=msgs)


def parallel_llm_calls(agent: agentshards.Agent) -> None:
    """Two unnamed LLM calls overlap in two threads: the second must be refused."""
    errors: list[BaseException] = []
    started = threading.Event()

    def call(i: int) -> None:
        try:
            if i == 1:
                started.wait(5)
                threading.Event().wait(0.05)
            else:
                started.set()
            agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
