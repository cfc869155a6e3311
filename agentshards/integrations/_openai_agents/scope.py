"""Which durable run an SDK call belongs to, and the step name it gets there.

The SDK's model and tool code runs deep inside ``Runner.run``, far from the agentshards handle; a context
variable carries the handle to it. Names must come out the same on every run of the same code, even where
the SDK works concurrently (parallel tool calls, agents used as tools, input guardrails beside the first
model call), so nothing is numbered by arrival order across tasks:

- a model call is ``sdk/model-N``, N counted within its scope, where calls follow one another;
- the agent function's second ``run(...)`` runs in ``sdk/run-2/``, its third in ``sdk/run-3/``, ...;
- a function-tool run is ``sdk/tool-NAME-CALLID``, keyed by the model's call id;
- an agent used as a tool runs in the scope ``sdk/CALLID/`` of the call that invoked it; a nested
  ``run(...)`` (a guardrail's agent, say) in ``sdk/guardrail-NAME/`` or, started elsewhere, ``sdk/nested-N/``.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .errors import NotDurable
from .handle import Handle

PREFIX = "sdk/"
MAX_NAME = 200


def _safe(part: str) -> str:
    """A name part with the characters step names reserve ('#', control characters) replaced."""
    return "".join("_" if c == "#" or ord(c) < 32 or ord(c) == 127 else c for c in part)


@dataclass
class Scope:
    """Where the calls of one SDK run (or of one agent used as a tool inside it) are named."""

    handle: Handle
    prefix: str
    _counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self, kind: str) -> int:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            return self._counts[kind]

    def _name(self, tail: str) -> str:
        name = self.prefix + _safe(tail)
        if len(name) <= MAX_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        return f"{PREFIX}long-{digest}"

    def model_step(self) -> str:
        return self._name(f"model-{self._next('model')}")

    def tool_step(self, tool: str, call_id: str) -> str:
        return self._name(f"tool-{tool}-{call_id}")

    def child(self, tail: str) -> Scope:
        return Scope(self.handle, self._name(tail) + "/")

    def nested_run(self, label: str | None) -> Scope:
        """The scope of a ``run(...)`` started inside this one: by the guardrail that started it when there
        is one (guardrails run concurrently, under unique names), else by order."""
        tail = f"guardrail-{label}" if label else f"nested-{self._next('nested')}"
        count = self._next(f"child:{tail}")
        return self.child(tail if count == 1 else f"{tail}-{count}")


_current: ContextVar[Scope | None] = ContextVar("agentshards_openai_agents_scope", default=None)
_top_level_runs: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_top_level_lock = threading.Lock()


def top_level(handle: Handle) -> Scope:
    """The scope of a ``run(...)`` the agent function itself started: ``sdk/`` for its first, then
    ``sdk/run-N/``, so two SDK runs of one agent never share a name (nor number one by arrival)."""
    with _top_level_lock:
        count = _top_level_runs.get(handle.agent, 0) + 1
        _top_level_runs[handle.agent] = count
    return Scope(handle, PREFIX if count == 1 else f"{PREFIX}run-{count}/")


def current() -> Scope | None:
    return _current.get()


def require() -> Scope:
    scope = _current.get()
    if scope is None:
        raise NotDurable("an SDK model call reached the durable client outside agentshards' run(...)",
                         hint="start SDK runs with agentshards.integrations.openai_agents.run(agent, ...)")
    return scope


@contextmanager
def entered(scope: Scope) -> Iterator[Scope]:
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
