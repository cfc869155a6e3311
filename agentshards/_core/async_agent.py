"""The handle an ``async def`` agent receives: ``await agent.step(...)``, ``await agent.llm...create(...)``.

Same journal, names, hashes, attempt rows, ledger and options as the sync :class:`~agentshards.Agent`
(the bookkeeping is :class:`.steps.StepBook`, one copy for both); what differs is how a step is performed:

- ``fn`` may be sync or async: a coroutine (or any awaitable) it returns is awaited. A sync ``fn`` runs on
  the event loop, as any sync call in async code does: keep it short, or hand it to ``asyncio.to_thread``
  inside an async ``fn``.
- A step's ``timeout_s`` cancels it (``asyncio.timeout``): the coroutine sees CancelledError at its
  current await and nothing keeps running behind the caller's back. A sync ``fn`` cannot be interrupted.
- Retries wait with ``asyncio.sleep``; journal reads and writes go through an offload (see :mod:`.offload`)
  so a commit's fsync does not stall the other agents on the loop.
- Concurrent steps (``asyncio.gather``) need explicit unique names, as threads do: the step running is
  tracked per task, so nesting and overlap are detected per task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._base.config import Durability, RunConfig
from .._base.errors import InvalidStepName
from .async_steps import AsyncStepRunner
from .journal import Journal
from .offload import Offload
from .steps import StepOptions

if TYPE_CHECKING:  # the facade (and openai) loads on first use: replaying a plain agent needs none of it
    from .async_llm import AsyncDurableLLM

__all__ = ["AsyncAgent"]

log = logging.getLogger("agentshards")


class AsyncAgent(AsyncStepRunner):
    """One async agent's handle on its open run; made by ``run_agent``/``arun_agent`` for an ``async def``
    agent. Steps may run concurrently in tasks of one event loop (with explicit unique names)."""

    def __init__(self, journal: Journal, run_id: str, config: RunConfig,
                 confirm: Callable[[str, float], None] | None = None, execution: int = 1,
                 io: Offload | None = None) -> None:
        super().__init__(journal, run_id, config, confirm=confirm, execution=execution, io=io)
        self._llm: AsyncDurableLLM | None = None

    def options(self, *, name: str | None = None, timeout_s: float | None = None,
                max_attempts: int | None = None, durability: Durability | None = None) -> _AsyncOptionView:
        """Step options kept apart from ``fn``'s own keyword arguments, e.g. ``agent.options(name="plan").llm``."""
        if name is not None:
            self._check_name(name)
        return _AsyncOptionView(self, StepOptions(name=name, timeout_s=timeout_s, max_attempts=max_attempts,
                                                  durability=durability))

    @property
    def llm(self) -> AsyncDurableLLM:
        """A durable ``AsyncOpenAI`` facade: ``await agent.llm.chat.completions.create(...)``."""
        if self._llm is None:
            from .async_llm import AsyncDurableLLM

            self._llm = AsyncDurableLLM(self, StepOptions())
        return self._llm

class _AsyncOptionView:
    """``agent.options(...)``: the same ``step`` and ``llm`` with options applied."""

    def __init__(self, agent: AsyncAgent, options: StepOptions) -> None:
        self._agent = agent
        self._options = options

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._options.name is not None and self._options.name != name:
            raise InvalidStepName(f"two names for one step: {self._options.name!r} and {name!r}",
                                  agent_id=self._agent.agent_id, hint="name a plain step in step() only")
        return await self._agent._plain_step(replace(self._options, name=None), name, fn, args, kwargs)

    @property
    def llm(self) -> AsyncDurableLLM:
        from .async_llm import AsyncDurableLLM

        return AsyncDurableLLM(self._agent, self._options)
