"""The async step machinery: how an ``async def`` agent's steps are performed and recorded.

The bookkeeping (names, replay, hashes, records) is :class:`.steps.StepBook`, shared with the sync agent;
this module adds the async way of performing a step. The handle agent code receives (``AsyncAgent``, with its
durable LLM facade) builds on it in :mod:`.async_agent`, so the facade can type its agent as this runner
without an import circle, as the sync facade does with :class:`.steps.StepRunner`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._base.config import RunConfig
from .._base.errors import StepTimeout
from . import codec as _codec
from . import fence as _fence
from .journal import Journal, StepRecord
from .offload import Offload, offload
from .steps import STEP, Performed, StepBook, StepCall, StepOptions

log = logging.getLogger("agentshards")


class AsyncStepRunner(StepBook):
    """Performs and records the steps of one async agent's open run (see :class:`.async_agent.AsyncAgent`)."""

    def __init__(self, journal: Journal, run_id: str, config: RunConfig,
                 confirm: Callable[[str, float], None] | None = None, execution: int = 1,
                 io: Offload | None = None) -> None:
        super().__init__(journal, run_id, config, confirm=confirm, execution=execution)
        self._io: Offload = io or offload()

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (awaiting what it returns, if awaitable) once for this run and return
        its recorded JSON value; a completed step returns the stored value without calling ``fn``."""
        return await self._plain_step(StepOptions(), name, fn, args, kwargs)

    # -- performing steps ---------------------------------------------------------------------------------

    async def _plain_step(self, options: StepOptions, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
        input_text = self._plain_input(fn, name, args, kwargs)
        record = await self._execute(self._check_name(name), STEP, input_text, options,
                                     lambda call: self._run_plain(call, fn, args, kwargs))
        return _codec.loads(record.output_json)

    async def _run_plain(self, call: StepCall, fn: Callable[..., Any], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Performed:
        _fence.check_start(self.agent_id, call.name)  # a stopping fleet worker starts no new step
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
            replicated = self._is_replicated(options, name, kind)
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
