"""The step machinery behind ``agent.step(...)`` and the LLM facade: naming, replay, perform-and-record.

Step names are how a resumed run finds what it already did, so they must come out the same on every
run of the same code: explicit names are used as given and numbered by occurrence (``search``,
``search#2``...); unnamed LLM calls are ``llm#1``, ``llm#2``... by call order. Call order is only
deterministic when steps do not overlap, hence the checks on concurrent and nested steps.

Each step also records a hash of what it was called with; a replay that calls it with something else
raises NonDeterminismError instead of silently returning an answer to a different question.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .._base.config import Durability, RunConfig
from .._base.crashpoints import CrashCounter, CrashPlan
from .._base.errors import (
    AgentShardsError,
    ConcurrentStepError,
    InFlightStepError,
    InvalidStepName,
    NonDeterminismError,
    ReplicationError,
    StepTimeout,
)
from . import codec as _codec
from . import fence as _fence
from .journal import Journal, StepRecord
from .ledger import Usage

log = logging.getLogger("agentshards")

MAX_STEP_NAME = 200
LLM_BASE_NAME = "llm"
STEP, LLM = "step", "llm"
PREVIEW_CHARS = 300
_KEY_NAMESPACE = uuid.UUID("5b0c7d2e-3f1a-4c8e-9a6b-2d4e6f8a0c1e")


@dataclass(frozen=True)
class StepOptions:
    """Options for one step, given through ``agent.options(...)`` so they never mix with ``fn``'s kwargs.

    - ``name``: the step's name (for LLM calls; plain steps take it as their first argument).
    - ``timeout_s``: wall-clock budget for the whole step, retries included; StepTimeout when spent.
    - ``max_attempts``: attempts before giving up (plain steps: 1 unless set, retried on any
      exception; LLM calls: ``LLMConfig.max_attempts``, retried on transient errors only).
    - ``durability``: ``replicated`` returns only once the replica confirmed the step.
    """

    name: str | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    durability: Durability | None = None
    """``local`` or ``replicated`` for this step; ``None`` takes the run's default (RunConfig.durability)."""

    def __post_init__(self) -> None:
        if self.durability not in (None, "local", "replicated"):
            raise ValueError(f"durability must be 'local' or 'replicated', not {self.durability!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {self.timeout_s!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts!r}")


@dataclass(frozen=True)
class StepCall:
    """What the step machinery hands to the code that performs a step for the first time."""

    name: str
    input_hash: str
    options: StepOptions


_CURRENT: contextvars.ContextVar[tuple[StepBook, object, str] | None] = contextvars.ContextVar(
    "agentshards_current_step", default=None)
"""The step running in this context: (its run's bookkeeping, claim token, name). A context variable rather
than a thread-local, so it is per thread for threaded agents and per task for ``asyncio.gather`` alike."""


class StepBook:
    """The bookkeeping of one open run that does not care how steps are performed: naming and claiming,
    replay and non-determinism checks, recording, replication confirmation, the replay ledger.

    :class:`StepRunner` (sync agents) and :class:`~agentshards.AsyncAgent` perform steps their own way on
    top of this one copy of the rules; the LLM facades build on it without depending on either handle.
    """

    def __init__(self, journal: Journal, run_id: str, config: RunConfig,
                 confirm: Callable[[str, float], None] | None = None, execution: int = 1) -> None:
        self._journal = journal
        self._confirm = confirm
        self.execution = execution
        self._recorded_calls = journal.recorded_calls(run_id)
        self._replays: list[tuple[str, Usage, float | None]] = []
        self.agent_id = journal.agent_id
        self.run_id = run_id
        self._config = config
        self._completed = journal.completed_steps(run_id)
        self._in_flight_at_start = {a.step_name: a for a in journal.in_flight(run_id)}
        self._lock = threading.Lock()
        self._occurrences: dict[str, int] = {}
        self._llm_calls = 0
        self._running: dict[object, str] = {}
        self._open: dict[object, Callable[[], Any]] = {}
        self._ended = False
        self._crash = CrashCounter(CrashPlan.parse(config.crash_plan))
        for attempt in self._in_flight_at_start.values():
            log.warning("agent %s: LLM step %r was in flight when the agent stopped (attempt %d, started %s);"
                        " in_flight policy %r", self.agent_id, attempt.step_name, attempt.attempt,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(attempt.started_at)), config.in_flight)

    def idempotency_key(self) -> str:
        """A key for the step running in this thread or task, the same on every attempt and every re-run of it.

        Pass it to side-effecting APIs (payments, emails, tickets) so that a step re-run after a crash
        cannot do the side effect twice.
        """
        current = _CURRENT.get()
        if current is None or current[0] is not self:
            raise AgentShardsError("idempotency_key() called outside a step", agent_id=self.agent_id,
                                   hint="call it inside the function passed to agent.step")
        return str(uuid.uuid5(_KEY_NAMESPACE, f"{self.agent_id}/{self.run_id}/{current[2]}"))

    @property
    def completed_step_names(self) -> list[str]:
        return list(self._completed)

    # -- bookkeeping shared by every way of performing a step -------------------------------------------

    def _plain_input(self, fn: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """What a plain step is called with, as hashed for replay: the function's name and its arguments."""
        if not callable(fn):
            raise TypeError(f"agent.step({name!r}, fn, ...): fn must be callable, not {type(fn).__name__}")
        label = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        try:
            return _codec.canonical({"fn": label, "args": args, "kwargs": kwargs})
        except (TypeError, ValueError):
            return _codec.canonical({"fn": label})  # never repr(): it carries memory addresses

    def _retry_pause(self, attempt: int) -> float:
        """Seconds before a plain step's next attempt: exponential, capped like the LLM backoff."""
        return float(min(self._config.llm.backoff_max_s, self._config.llm.backoff_s * 2 ** attempt))

    def _is_replicated(self, options: StepOptions, name: str, kind: str) -> bool:
        replicated = (options.durability or (self._config.llm_durability if kind == LLM else None)
                      or self._config.durability) == "replicated"
        if replicated and self._confirm is None:
            raise ReplicationError("durability 'replicated' needs a replica", agent_id=self.agent_id, step=name,
                                   hint="pass replica='s3://bucket/prefix' (or a directory) to run_agent")
        return replicated

    def _replayed(self, name: str, kind: str, input_hash: str, input_text: str) -> StepRecord | None:
        """The stored record when the step completed in an earlier execution (checked for drift), else None."""
        stored = self._completed.get(name)
        if stored is None:
            return None
        if stored.input_hash is not None and stored.input_hash != input_hash:
            raise self._nondeterminism(name, stored, input_text)
        if kind == LLM and name in self._recorded_calls:
            with self._lock:
                self._replays.append((name, *self._recorded_calls[name]))
        return stored

    def _before_perform(self, name: str) -> None:
        """Runs before a step is performed for the first time: the replay ledger is written, and an LLM step
        that was in flight at a crash is refused when the in-flight policy says so."""
        self.flush_ledger()
        if name in self._in_flight_at_start and self._config.in_flight == "fail":
            attempt = self._in_flight_at_start[name]
            raise InFlightStepError(
                f"its LLM request (attempt {attempt.attempt}) was in flight when the agent stopped",
                agent_id=self.agent_id, step=name,
                hint="check the provider's usage for that call, then re-run with RunConfig(in_flight='retry')")

    def _record(self, call: StepCall, kind: str, input_text: str, output_json: str, outcome: str) -> StepRecord:
        """Record a performed step (one transaction); the stored record is what every caller returns."""
        stored = self._journal.record_step(self.run_id, call.name, kind, output_json, input_hash=call.input_hash,
                                           input_preview=input_text[:PREVIEW_CHARS], outcome=outcome)
        self._completed[call.name] = stored
        if kind == LLM:
            self._crash.reached("after_commit")
        return stored

    def flush_ledger(self) -> None:
        """Write what this execution saved by replaying recorded LLM calls, in one transaction.

        Buffered so a replay of hundreds of calls costs one commit; written before the first new step and
        when the run ends. A crash before that loses only this execution's *savings* figures.
        """
        if not self._replays:  # the common case on the per-step hot path
            return
        with self._lock:
            replays, self._replays = self._replays, []
        self._journal.record_replays(self.run_id, self.execution, replays)

    def _replicate(self, stored: StepRecord) -> StepRecord:
        assert self._confirm is not None
        self._confirm(self.agent_id, self._config.replication_timeout_s)
        at = self._journal.mark_replicated(self.run_id, stored.name)
        stored = replace(stored, replicated_at=at)
        self._completed[stored.name] = stored
        return stored

    def _nondeterminism(self, name: str, stored: StepRecord, input_text: str) -> NonDeterminismError:
        def short(text: str | None) -> str:
            text = text or "?"
            return text if len(text) <= 160 else text[:157] + "..."

        return NonDeterminismError(
            f"replayed with different input: recorded {short(stored.input_preview)}, now {short(input_text)}",
            agent_id=self.agent_id, step=name,
            hint="the code or its inputs changed since this step ran: start over with new_run=True, or keep "
                 "the steps before it with agentshards.fork_run(..., at_step=N)")

    def _check_name(self, name: object) -> str:
        if not isinstance(name, str) or not name or len(name) > MAX_STEP_NAME:
            raise InvalidStepName(f"step name must be a non-empty str of at most {MAX_STEP_NAME} characters,"
                                  f" not {ascii(name)[:80]}", agent_id=self.agent_id,
                                  hint="name steps after what they do, e.g. 'search'")
        if "#" in name or name == LLM_BASE_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise InvalidStepName(f"step name {ascii(name)[:80]} is reserved or contains '#'/control characters",
                                  agent_id=self.agent_id,
                                  hint="'#' numbers repeated names and 'llm' numbers unnamed LLM calls")
        return name

    def _claim(self, base: str | None) -> tuple[str, contextvars.Token[tuple[StepBook, object, str] | None]]:
        """Name the step and mark it running in this context (thread or task) until ``_release``.

        Numbered names depend on call order, which is only deterministic when steps do not overlap: a numbered
        step that starts while another step runs (another thread, another task) is refused.
        """
        current = _CURRENT.get()
        if current is not None and current[0] is self and current[1] in self._running:
            raise ConcurrentStepError(
                f"a step started inside step {current[2]!r}", agent_id=self.agent_id,
                hint="steps cannot be nested: a replayed outer step would skip the inner one; "
                     "call them one after the other")
        with self._lock:
            if self._ended:
                raise AgentShardsError(f"step {base or LLM_BASE_NAME!r} started after the run ended",
                                       agent_id=self.agent_id,
                                       hint="await (or cancel) every task and join every thread the agent starts "
                                            "before it returns")
            if base is None:
                self._llm_calls += 1
                name, numbered = f"{LLM_BASE_NAME}#{self._llm_calls}", True
            else:
                count = self._occurrences.get(base, 0) + 1
                self._occurrences[base] = count
                name, numbered = (base, False) if count == 1 else (f"{base}#{count}", True)
            if numbered and self._running:
                busy = ", ".join(sorted(self._running.values()))
                raise ConcurrentStepError(
                    f"step {name!r} started while {busy} ran in another thread or task; its number depends"
                    " on timing", agent_id=self.agent_id, step=name,
                    hint="give concurrent steps explicit unique names, e.g. agent.options(name='fetch-3').llm")
            claim = object()
            self._running[claim] = name
        return name, _CURRENT.set((self, claim, name))

    def end(self) -> None:
        """The agent function returned or raised: a step a leftover thread or task starts now is refused."""
        with self._lock:
            self._ended = True

    def _release(self, token: contextvars.Token[tuple[StepBook, object, str] | None]) -> None:
        mine = _CURRENT.get()
        _CURRENT.reset(token)
        assert mine is not None
        with self._lock:
            del self._running[mine[1]]

    # -- steps left open: a stream the agent has not read to its end ---------------------------------------

    def _hold_open(self, finish: Callable[[], Any]) -> object:
        """Keep this context's running step open after its call returned (a stream being read); ``finish``
        (sync, or async for an async agent) completes it. Returns the claim, for :meth:`_let_go`."""
        current = _CURRENT.get()
        assert current is not None and current[0] is self
        with self._lock:
            self._open[current[1]] = finish
        return current[1]

    def _open_here(self) -> Callable[[], Any] | None:
        """How to complete the step this context left open, if any: run before its next step, so a stream
        the agent stopped reading is read and recorded first and steps keep their call order."""
        current = _CURRENT.get()
        if current is None or current[0] is not self:
            return None
        with self._lock:
            return self._open.get(current[1])

    def _let_go(self, claim: object, token: contextvars.Token[tuple[StepBook, object, str] | None]) -> None:
        """Release an open step's claim from any context: its own (the usual case) or the run's, at its end."""
        current = _CURRENT.get()
        if current is not None and current[1] is claim:
            _CURRENT.reset(token)
        with self._lock:
            self._running.pop(claim, None)
            self._open.pop(claim, None)

    def _still_open(self) -> list[Callable[[], Any]]:
        """The finishers of every step left open (for the run's end)."""
        with self._lock:
            return list(self._open.values())


class Performed(NamedTuple):
    """A step performed for the first time, about to be recorded.

    ``before_record`` is journal work that must commit before the step's own record (an LLM answer's
    ledger row): it runs in the same trip to the offload thread as the record, as its own transaction.
    """

    output_json: str
    outcome: str
    before_record: Callable[[], None] | None = None


class StepRunner(StepBook):
    """Steps performed synchronously, in the calling thread: the machinery behind :class:`~agentshards.Agent`."""

    def _finish_open_here(self) -> None:
        finish = self._open_here()
        if finish is not None:
            finish()  # this thread's open stream: read to its end and recorded before its next step

    def _finish_open_steps(self) -> None:
        """The run ends: every stream left open is read to its end and recorded."""
        for finish in self._still_open():
            finish()

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this run and return its recorded JSON value.

        On a resumed run a completed step returns the stored value without calling ``fn``. Steps run at
        least once (a crash before the record re-runs ``fn``) and complete exactly once.
        """
        return self._plain_step(StepOptions(), name, fn, args, kwargs)

    def _plain_step(self, options: StepOptions, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        input_text = self._plain_input(fn, name, args, kwargs)
        record = self._execute(self._check_name(name), STEP, input_text, options,
                               lambda call: self._run_plain(call, fn, args, kwargs))
        return _codec.loads(record.output_json)

    def _run_plain(self, call: StepCall, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[str, str]:
        _fence.check_start(self.agent_id, call.name)  # a stopping fleet worker starts no new step
        attempts = call.options.max_attempts or 1

        def attempt_all() -> Any:
            for attempt in range(1, attempts + 1):
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if attempt == attempts:
                        raise
                    pause = self._retry_pause(attempt)
                    log.warning("agent %s: step %r attempt %d/%d failed (%s); retrying in %.2fs",
                                self.agent_id, call.name, attempt, attempts, exc, pause)
                    time.sleep(pause)
            raise AssertionError("unreachable")

        value = attempt_all() if call.options.timeout_s is None else self._with_deadline(call, attempt_all)
        return _codec.dumps(value, agent_id=self.agent_id, step=call.name), "ok"

    def _with_deadline(self, call: StepCall, work: Callable[[], Any]) -> Any:
        """Run ``work`` in a helper thread and stop waiting after the step's timeout.

        Python cannot stop a thread: on timeout the function keeps running in the background and its
        result is discarded (nothing is recorded), which is why steps must be safe to run again. The helper
        runs in a copy of this context, so it is inside the step (idempotency_key, nesting checks).
        """
        box: dict[str, Any] = {}
        context = contextvars.copy_context()

        def target() -> None:
            try:
                box["value"] = context.run(work)
            except BaseException as exc:
                box["error"] = exc

        worker = threading.Thread(target=target, name=f"step-{call.name}", daemon=True)
        worker.start()
        worker.join(call.options.timeout_s)
        if worker.is_alive():
            raise StepTimeout(f"no result within {call.options.timeout_s}s", agent_id=self.agent_id,
                              step=call.name, hint="raise timeout_s in agent.options(...) or make the step faster")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _execute(self, base: str | None, kind: str, input_text: str, options: StepOptions,
                 perform: Callable[[StepCall], tuple[str, str]]) -> StepRecord:
        """Claim the step's name, then replay it or perform and record it. Returns the stored record."""
        self._finish_open_here()
        name, token = self._claim(base)
        try:
            input_hash = _codec.digest(input_text)
            replicated = self._is_replicated(options, name, kind)
            stored = self._replayed(name, kind, input_hash, input_text)
            if stored is None:
                self._before_perform(name)
                call = StepCall(name, input_hash, options)
                output_json, outcome = perform(call)
                stored = self._record(call, kind, input_text, output_json, outcome)
            if replicated and stored.replicated_at is None:  # also a replayed step never confirmed: wait again
                stored = self._replicate(stored)
            return stored
        finally:
            self._release(token)
