"""Agent targets: a module-level function recorded as ``module:function`` so any process can import it."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from .._base.errors import InvalidTarget

AgentFn = Callable[..., Any]


def target_of(fn: AgentFn | str) -> tuple[str, AgentFn]:
    """Return (``module:function``, the function), refusing what another process could not import."""
    if isinstance(fn, str):
        return fn, _runnable(fn, resolve(fn))
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qualname:
        raise InvalidTarget(f"{fn!r} is not a function", hint="pass a module-level function or 'module:function'")
    if module == "__main__":
        raise InvalidTarget(
            f"agent function {qualname} is defined in __main__, which a resumed or restored process cannot import",
            hint="move it into a module (e.g. myproject/agents.py) and import it from there")
    if "." in qualname or "<" in qualname:
        raise InvalidTarget(f"{module}:{qualname} is not a module-level function",
                            hint="define the agent function at the top level of its module")
    target = f"{module}:{qualname}"
    if resolve(target) is not fn:
        raise InvalidTarget(f"{target} does not resolve to the function given",
                            hint="do not rebind or decorate the agent function under another name")
    return target, _runnable(target, fn)


def _runnable(target: str, fn: AgentFn) -> AgentFn:
    """Plain and ``async def`` functions are agents; an async generator is not (it returns no result)."""
    if inspect.isasyncgenfunction(fn):
        raise InvalidTarget(f"{target} is an async generator function; an agent returns its result",
                            hint="define the agent with `def` or `async def` and return the result")
    return fn


def is_async(fn: AgentFn) -> bool:
    """An ``async def`` agent: it gets an AsyncAgent and runs on an event loop."""
    return inspect.iscoroutinefunction(fn)


def resolve(target: str) -> AgentFn:
    """Import ``module:function``; every failure is an InvalidTarget with a hint."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise InvalidTarget(f"target {target!r} is not 'module:function'", hint="e.g. myproject.agents:researcher")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidTarget(f"cannot import {module_name!r} for target {target!r}: {exc}",
                            hint="run from the app directory or add it to PYTHONPATH") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InvalidTarget(f"{module_name!r} has no function {attr!r}", hint="check the spelling of the target")
    return fn  # type: ignore[no-any-return]
