"""The object agent code receives: ``agent.step(...)``, ``agent.llm``, ``agent.options(...)``.

The step machinery (names, replay, records) lives in :mod:`.steps`; this module adds what hands out the
durable LLM facade, so the facade can build on the machinery without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._base.config import Durability, RunConfig
from .._base.errors import InvalidStepName
from .journal import Journal
from .steps import StepOptions, StepRunner

if TYPE_CHECKING:  # the facade (and what it imports) loads on first use: replaying a plain agent needs none
    from .llm import DurableLLM

__all__ = ["Agent", "StepOptions"]


class Agent(StepRunner):
    """One agent's handle on its open run. Thread-safe; one instance per run, made by ``run_agent``."""

    def __init__(self, journal: Journal, run_id: str, config: RunConfig,
                 confirm: Callable[[str, float], None] | None = None, execution: int = 1) -> None:
        super().__init__(journal, run_id, config, confirm=confirm, execution=execution)
        self._llm: DurableLLM | None = None

    def options(self, *, name: str | None = None, timeout_s: float | None = None,
                max_attempts: int | None = None, durability: Durability | None = None) -> _OptionView:
        """Step options kept apart from ``fn``'s own keyword arguments, e.g. ``agent.options(name="plan").llm``."""
        if name is not None:
            self._check_name(name)
        return _OptionView(self, StepOptions(name=name, timeout_s=timeout_s, max_attempts=max_attempts,
                                             durability=durability))

    @property
    def llm(self) -> DurableLLM:
        """A durable OpenAI facade: ``agent.llm.chat.completions.create(...)``."""
        if self._llm is None:
            from .llm import DurableLLM

            self._llm = DurableLLM(self, StepOptions())
        return self._llm


class _OptionView:
    """``agent.options(...)``: the same ``step`` and ``llm`` with options applied."""

    def __init__(self, agent: Agent, options: StepOptions) -> None:
        self._agent = agent
        self._options = options

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._options.name is not None and self._options.name != name:
            raise InvalidStepName(f"two names for one step: {self._options.name!r} and {name!r}",
                                  agent_id=self._agent.agent_id, hint="name a plain step in step() only")
        return self._agent._plain_step(replace(self._options, name=None), name, fn, args, kwargs)

    @property
    def llm(self) -> DurableLLM:
        from .llm import DurableLLM

        return DurableLLM(self._agent, self._options)
