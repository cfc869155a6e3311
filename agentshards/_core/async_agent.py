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

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from .._base.config import Durability, RunConfig
from .._base.errors import InvalidStepName, StepTimeout
from . import codec as _codec
from .journal import Journal, StepRecord
from .offload import Offload, offload
from .steps import STEP, StepBook, StepCall, StepOptions

if TYPE_CHECKING:  # the facade (and openai) loads on first use: replaying a plain agent needs none of it
    from .async_llm import AsyncDurableLLM

__all__ = ["AsyncAgent"]

log = logging.getLogger("agentshards")


class Performed(NamedTuple):
    """A step performed for the first time, about to be recorded.

    ``before_record`` is journal work that must commit before the step's own record (an LLM answer's
    ledger row): it runs in the same trip to the offload thread as the record, as its own transaction.
    """

    output_json: str
    outcome: str
    before_record: Callable[[], None] | None = None


class AsyncAgent(StepBook):
    """One async agent's handle on its open run; made by ``run_agent``/``arun_agent`` for an ``async def``
    agent. Steps may run concurrently in tasks of one event loop (with explicit unique names)."""

    def __init__(self, journal: Journal, run_id: str, config: RunConfig,
                 confirm: Callable[[str, float], None] | None = None, execution: int = 1,
                 io: Offload | None = None) -> None:
        super().__init__(journal, run_id, config, confirm=confirm, execution=execution)
        self._io: Offload = io or offload()
        self._llm: AsyncDurableLLM | None = None

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (awaiting what it returns, if awaitable) once for this run and return
        its recorded JSON value; a completed step returns the stored value without calling ``fn``."""
        return await self._plain_step(StepOptions(), name, fn, args, kwargs)

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

    # -- performing steps ---------------------------------------------------------------------------------

    async def _plain_step(self, options: StepOptions, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
        input_text = self._plain_input(fn, name, args, kwargs)
        record = await self._execute(self._check_name(name), STEP, input_text, options,
                                     lambda call: self._run_plain(call, fn, args, kwargs))
        return _codec.loads(record.output_json)

    async def _run_plain(self, call: StepCall, fn: Callable[..., Any], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Performed:
        attempts = call.options.max_attempts or 1

        async def attempt_all() -> Any:
            for attempt in range(1, attempts + 1):
                try:
                    value = fn(*args, **kwargs)
                    return await value if inspect.isawaitable(value) else value
                except Exception as exc:
                    if attempt == attempts:
                        raise
                    pause = self._retry_pause(attempt)
                    log.warning("agent %s: step %r attempt %d/%d failed (%s); retrying in %.2fs",
                                self.agent_id, call.name, attempt, attempts, exc, pause)
                    await asyncio.sleep(pause)
            raise AssertionError("unreachable")

        if call.options.timeout_s is None:
            value = await attempt_all()
        else:
            scope = asyncio.timeout(call.options.timeout_s)
            try:
                async with scope:
                    value = await attempt_all()
            except TimeoutError as exc:
                if not scope.expired():
                    raise  # the step's own TimeoutError, not its budget
                raise StepTimeout(f"no result within {call.options.timeout_s}s (cancelled)", agent_id=self.agent_id,
                                  step=call.name,
                                  hint="raise timeout_s in agent.options(...) or make the step faster") from exc
        return Performed(_codec.dumps(value, agent_id=self.agent_id, step=call.name), "ok")

    async def _execute(self, base: str | None, kind: str, input_text: str, options: StepOptions,
                       perform: Callable[[StepCall], Awaitable[Performed]]) -> StepRecord:
        """The async twin of ``StepRunner._execute``: the same bookkeeping, awaited where it blocks."""
        await self._finish_open_here()
        name, token = self._claim(base)
        try:
            input_hash = _codec.digest(input_text)
            replicated = self._is_replicated(options, name)
            stored = self._replayed(name, kind, input_hash, input_text)
            if stored is None:
                if self._replays:  # a write only after replays: most steps skip the thread hop
                    await self._io(self.flush_ledger)
                self._before_perform(name)
                call = StepCall(name, input_hash, options)
                performed = await perform(call)
                stored = await self._io(self._record_performed, call, kind, input_text, performed)
            if replicated and stored.replicated_at is None:  # also a replayed step never confirmed: wait again
                # a wait of up to a second or more for the replica, not a quick commit: never on the loop
                stored = await asyncio.to_thread(self._replicate, stored)
            return stored
        finally:
            self._release(token)


    async def _finish_open_here(self) -> None:
        finish = self._open_here()
        if finish is not None:
            await finish()  # this task's open stream: read to its end and recorded before its next step

    async def _finish_open_steps(self) -> None:
        """The run ends: every stream left open is read to its end and recorded."""
        for finish in self._still_open():
            await finish()

    def _record_performed(self, call: StepCall, kind: str, input_text: str, performed: Performed) -> StepRecord:
        if performed.before_record is not None:
            performed.before_record()
        return self._record(call, kind, input_text, performed.output_json, performed.outcome)


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
