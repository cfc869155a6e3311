"""What a durable SDK run refuses up front, before any step: features whose work or state would live
outside the journal. Refusing at the start means a run never gets halfway and then stops on them.

Refused: ``session=`` (the SDK's conversation memory is a second store beside the journal, written on
its own schedule; a resumed run would find it ahead of or behind the journal), ``conversation_id=``
(server-side conversation state, same problem), a ``RunState`` as input (resuming after approvals),
tools with ``needs_approval``, local shell/computer/apply-patch/custom tools, model objects and model
providers of the caller's own (their calls would not reach the durable client).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import NotDurable
from .models import DURABLE_MODELS, check_model_name
from .tools import check as check_tool

_REFUSED_KWARGS = {
    "session": ("the SDK's session memory is a second store beside the journal",
                "drop session=: the journal replays the run; pass earlier turns in the input"),
    "conversation_id": ("a server-side conversation holds state outside the journal",
                        "drop conversation_id=; pass earlier turns in the input"),
}


def check_kwargs(runner_kwargs: dict[str, Any], agent_id: str) -> None:
    for key, (why, hint) in _REFUSED_KWARGS.items():
        if runner_kwargs.get(key) is not None:
            raise NotDurable(f"Runner.run({key}=...) is not durable: {why}", feature=key, agent_id=agent_id,
                             hint=hint)


def check_input(value: Any, agent_id: str) -> None:
    from agents import RunState

    if isinstance(value, RunState):
        raise NotDurable("resuming from a RunState (run-state approvals) is not durable", feature="run_state",
                         agent_id=agent_id, hint="start the run from its input; the journal resumes it after a "
                                                 "crash; decide approvals inside a tool")


def check_run_config(run_config: Any, agent_id: str) -> None:
    from agents.models.interface import Model
    from agents.models.multi_provider import MultiProvider

    if isinstance(run_config.model, str):
        check_model_name(run_config.model, agent_id)
    if isinstance(run_config.model, Model) and not isinstance(run_config.model, DURABLE_MODELS):
        raise NotDurable(f"RunConfig(model=<{type(run_config.model).__name__}>) makes calls outside the journal",
                         feature="model", agent_id=agent_id, hint="give the model by name, e.g. 'gpt-4o-mini'")
    if type(run_config.model_provider) is not MultiProvider:
        raise NotDurable(f"RunConfig(model_provider=<{type(run_config.model_provider).__name__}>) makes calls "
                         "outside the journal", feature="model_provider", agent_id=agent_id,
                         hint="drop model_provider: models are resolved by name over agentshards' LLM settings")


def _agents(start: Any) -> Iterator[Any]:
    """Every agent reachable from ``start`` by handoffs and agents used as tools, each once."""
    seen: set[int] = set()
    todo = [start]
    while todo:
        agent = todo.pop()
        if id(agent) in seen:
            continue
        seen.add(id(agent))
        yield agent
        for handoff in getattr(agent, "handoffs", None) or []:
            ref = getattr(handoff, "_agent_ref", None)
            target = ref() if callable(ref) else handoff
            if target is not None and hasattr(target, "tools"):
                todo.append(target)
        for tool in getattr(agent, "tools", None) or []:
            inner = getattr(tool, "_agent_instance", None)
            if inner is not None:
                todo.append(inner)


def check_agents(start: Any, agent_id: str) -> None:
    """Refuse model objects and tools that cannot be made durable, anywhere in the agent graph."""
    from agents.models.interface import Model

    for sdk_agent in _agents(start):
        if isinstance(sdk_agent.model, str):
            check_model_name(sdk_agent.model, agent_id)
        if isinstance(sdk_agent.model, Model) and not isinstance(sdk_agent.model, DURABLE_MODELS):
            raise NotDurable(f"SDK agent {sdk_agent.name!r} has a model object "
                             f"({type(sdk_agent.model).__name__}) whose calls bypass the journal", feature="model",
                             agent_id=agent_id, hint="give the model by name, e.g. Agent(model='gpt-4o-mini')")
        for tool in sdk_agent.tools:
            try:
                check_tool(tool)
            except NotDurable as exc:
                raise NotDurable(f"SDK agent {sdk_agent.name!r}: {exc.message}", feature=exc.feature,
                                 agent_id=agent_id, hint=exc.hint) from None
