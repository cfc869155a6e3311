"""The agentshards handle as the integration uses it: awaitable LLM steps and plain steps."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any


async def _in_own_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a thread of its own, awaited from the loop (context variables copied).

    Not ``asyncio.to_thread``: the SDK runs sync function tools in the loop's default pool, and a step
    waiting for such a tool must not hold one of the pool's few threads (a dozen parallel tool calls would
    each hold one and wait for a tool that can never get one).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[Any], None], value: Any) -> None:
        if not done.done():  # the awaiting task may have been cancelled
            outcome(value)

    def work() -> None:
        try:
            value = context.run(fn, *args, **kwargs)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(settle, done.set_result, value)

    threading.Thread(target=work, name="agentshards-sdk-step", daemon=True).start()
    return await done


class Handle:
    """One agentshards handle as the integration uses it: awaitable steps and LLM calls.

    The async handle (``AsyncAgent``) is awaited directly. The sync ``Agent`` works too: its calls run in
    a thread of their own (its step machinery is thread-based), and a tool's coroutine runs on the SDK's
    loop.
    """

    def __init__(self, agent: Any) -> None:
        for attribute in ("step", "options", "agent_id", "run_id"):
            if not hasattr(agent, attribute):
                raise TypeError(f"run(agent, ...): agent must be the agentshards handle passed to the agent "
                                f"function, not {type(agent).__name__}")
        self.agent = agent
        self.agent_id: str = agent.agent_id
        self.run_id: str = agent.run_id
        self.is_async = inspect.iscoroutinefunction(agent.step)

    async def llm(self, endpoint: str, name: str, request: dict[str, Any]) -> Any:
        """One durable LLM step named ``name``: the provider's answer object, made once per run."""
        view = self.agent.options(name=name).llm
        create = view.responses.create if endpoint == "responses" else view.chat.completions.create
        if self.is_async:
            return await create(**request)
        return await _in_own_thread(create, **request)

    async def step(self, name: str, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """One durable plain step running the coroutine function ``fn(*args)``: its recorded JSON value."""
        if self.is_async:
            return await self.agent.step(name, fn, *args)
        loop = asyncio.get_running_loop()

        def run_on_loop(*values: Any) -> Any:
            # the task copies this thread's context (the step's): agent.idempotency_key() works in the tool
            return asyncio.run_coroutine_threadsafe(fn(*values), loop).result()

        # hashed as the coroutine function itself, so a step's input is the same under either handle
        run_on_loop.__module__, run_on_loop.__qualname__ = fn.__module__, fn.__qualname__
        return await _in_own_thread(self.agent.step, name, run_on_loop, *args)
