"""The object agent code receives: ``agent.step(...)``, ``agent.llm``, ``agent.options(...)``.

Step names are how a resumed run finds what it already did, so they must come out the same on every
run of the same code: explicit names are used as given and numbered by occurrence (``search``,
``search#2``...); unnamed LLM calls are ``llm#1``, ``llm#2``... by call order. Call order is only
deterministic when steps do not overlap, hence the checks on concurrent and nested steps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _codec
from ._config import LLMConfig
from ._errors import ConcurrentStepError, InvalidStepName
from ._journal import Journal

if TYPE_CHECKING:
    from ._llm import DurableLLM

MAX_STEP_NAME = 200
LLM_BASE_NAME = "llm"
STEP, LLM = "step", "llm"


@dataclass(frozen=True)
class StepOptions:
    """Options for the next step made through ``agent.options(...)``; later issues add more fields."""

    name: str | None = None


class Agent:
    """One agent's handle on its open run. Thread-safe; one instance per run, made by ``run_agent``."""

    def __init__(self, journal: Journal, run_id: str, llm_config: LLMConfig) -> None:
        self._journal = journal
        self.agent_id = journal.agent_id
        self.run_id = run_id
        self._llm_config = llm_config
        self._completed = journal.completed_steps(run_id)
        self._lock = threading.Lock()
        self._occurrences: dict[str, int] = {}
        self._llm_calls = 0
        self._in_flight: dict[int, str] = {}
        self._llm: DurableLLM | None = None

    # -- public ---------------------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this run and return its recorded JSON value.

        On a resumed run a completed step returns the stored value without calling ``fn``. Steps run at
        least once (a crash before the record re-runs ``fn``) and complete exactly once.
        """
        if not callable(fn):
            raise TypeError(f"agent.step({name!r}, fn, ...): fn must be callable, not {type(fn).__name__}")
        text = self._execute(self._check_name(name), STEP, lambda: fn(*args, **kwargs))
        return _codec.loads(text)

    def options(self, *, name: str | None = None) -> _OptionView:
        """Step options kept apart from ``fn``'s own keyword arguments, e.g. ``agent.options(name="plan").llm``."""
        return _OptionView(self, StepOptions(name=None if name is None else self._check_name(name)))

    @property
    def llm(self) -> DurableLLM:
        """A durable OpenAI facade: ``agent.llm.chat.completions.create(...)``."""
        if self._llm is None:
            from ._llm import DurableLLM

            self._llm = DurableLLM(self, self._llm_config, StepOptions())
        return self._llm

    @property
    def completed_step_names(self) -> list[str]:
        return list(self._completed)

    # -- used by the LLM facade ------------------------------------------------------------------------

    def _execute(self, base: str | None, kind: str, call: Callable[[], Any]) -> str:
        """Claim the step's name, replay or run it, and return the stored JSON text."""
        name = self._claim(base)
        try:
            stored = self._completed.get(name)
            if stored is None:
                text = _codec.dumps(call(), agent_id=self.agent_id, step=name)
                stored = self._journal.record_step(self.run_id, name, kind, text)
                self._completed[name] = stored
            return stored
        finally:
            with self._lock:
                del self._in_flight[threading.get_ident()]

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

    def _claim(self, base: str | None) -> str:
        me = threading.get_ident()
        with self._lock:
            if me in self._in_flight:
                raise ConcurrentStepError(
                    f"a step started inside step {self._in_flight[me]!r}", agent_id=self.agent_id,
                    hint="steps cannot be nested: a replayed outer step would skip the inner one; "
                         "call them one after the other")
            if base is None:
                self._llm_calls += 1
                name, numbered = f"{LLM_BASE_NAME}#{self._llm_calls}", True
            else:
                count = self._occurrences.get(base, 0) + 1
                self._occurrences[base] = count
                name, numbered = (base, False) if count == 1 else (f"{base}#{count}", True)
            if numbered and self._in_flight:
                busy = ", ".join(sorted(self._in_flight.values()))
                raise ConcurrentStepError(
                    f"step {name!r} started while {busy} ran in another thread; its number depends on timing",
                    agent_id=self.agent_id, step=name,
                    hint="give concurrent steps explicit unique names, e.g. agent.options(name='fetch-3').llm")
            self._in_flight[me] = name
            return name


class _OptionView:
    """``agent.options(...)``: the same ``step`` and ``llm`` with options applied."""

    def __init__(self, agent: Agent, options: StepOptions) -> None:
        self._agent = agent
        self._options = options

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._options.name is not None and self._options.name != name:
            raise InvalidStepName(f"two names for one step: {self._options.name!r} and {name!r}",
                                  agent_id=self._agent.agent_id, hint="name a plain step in step() only")
        return self._agent.step(name, fn, *args, **kwargs)

    @property
    def llm(self) -> DurableLLM:
        from ._llm import DurableLLM

        return DurableLLM(self._agent, self._agent._llm_config, self._options)
