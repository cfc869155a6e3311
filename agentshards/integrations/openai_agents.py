"""Durable OpenAI Agents SDK runs: ``await run(agent, sdk_agent, input)`` inside an agentshards agent.

Install with ``pip install 'agentshards[agents]'`` (it pins the SDK versions this module is tested with).
Inside an agent function, run the SDK agent through :func:`run` instead of ``Runner.run``::

    from agents import Agent as SDKAgent, function_tool
    from agentshards.integrations import openai_agents

    @function_tool
    def add(a: int, b: int) -> int:
        return a + b

    def math_agent(agent, question: str) -> str:
        sdk_agent = SDKAgent(name="math", instructions="Use the tools.", model="gpt-4o-mini", tools=[add])
        return openai_agents.run_sync(agent, sdk_agent, question).final_output

What becomes durable: every model call (Responses or Chat Completions, handoffs, tool-use turns and
agents used as tools included) is a journaled LLM step through ``agent.llm``, with agentshards' retries,
ledger and budget; every function-tool run is a step keyed by the model's call id, so a resumed run gets
the recorded result and does not run the tool again. Hosted tools (web search, file search, code
interpreter, ...) run inside the model call and are recorded with it. A crash resumes the SDK run from
its input, replaying the journal up to where it stopped.

Refused with :class:`NotDurable` (an AgentShardsError naming the feature, with a hint), before anything
runs: ``session=``, ``conversation_id=``, a ``RunState`` input and tools that need approval; local shell,
computer, apply-patch and custom tools; model objects and model providers of the caller's own; streaming
on the sync handle (``run_streamed`` is durable in ``async def`` agent functions).
The SDK's own retries are switched off (the facade's are the one retry layer). Tracing is the SDK's and
stays the caller's choice: its default exporter sends traces to OpenAI (set
``OPENAI_AGENTS_DISABLE_TRACING=1`` offline).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from ._openai_agents import scope as _scope
from ._openai_agents.errors import NotDurable
from ._openai_agents.models import Api

if TYPE_CHECKING:
    from agents import Agent as SDKAgent
    from agents import RunResult, RunResultStreaming

__all__ = ["NotDurable", "run", "run_streamed", "run_sync"]


def _base_url(agent: Any) -> str | None:
    """The endpoint the agent's LLM facade calls (from its run's LLM settings)."""
    llm = getattr(getattr(agent, "_config", None), "llm", None)
    return getattr(llm, "base_url", None)


def _run_config(given: Any, agent: Any, api: Api) -> Any:
    """The caller's RunConfig with durable models and no SDK-side retries."""
    from agents import ModelSettings, RunConfig
    from agents.retry import ModelRetrySettings

    from ._openai_agents.client import DurableClient
    from ._openai_agents.models import DurableProvider

    config = given if given is not None else RunConfig()
    no_retries = ModelSettings(retry=ModelRetrySettings(max_retries=0))
    settings = (config.model_settings or ModelSettings()).resolve(no_retries)
    return dataclasses.replace(config, model_provider=DurableProvider(DurableClient(_base_url(agent)), api),
                               model_settings=settings)


def _nested_label() -> str | None:
    """The guardrail a nested run() was started from, if it was (guardrails run concurrently)."""
    from agents.tracing import GuardrailSpanData, get_current_span

    data = getattr(get_current_span(), "span_data", None)
    return data.name if isinstance(data, GuardrailSpanData) else None


def _checked(handle: Any, sdk_agent: Any, input: Any, runner_kwargs: dict[str, Any]) -> Any:
    """Refuse what cannot be durable (see guards); the caller's RunConfig, taken out of ``runner_kwargs``."""
    from agents import RunConfig

    from ._openai_agents import guards

    guards.check_kwargs(runner_kwargs, handle.agent_id)
    guards.check_input(input, handle.agent_id)
    config = runner_kwargs.pop("run_config", None)
    if isinstance(config, dict):
        config = RunConfig(**config)
    if config is not None:
        guards.check_run_config(config, handle.agent_id)
    guards.check_agents(sdk_agent, handle.agent_id)
    return config


async def run(agent: Any, sdk_agent: SDKAgent[Any], input: Any, *, api: Api = "responses",
              **runner_kwargs: Any) -> RunResult:
    """Run ``sdk_agent`` on ``input`` like ``Runner.run``, every model call and function-tool run a durable
    step of ``agent`` (the agentshards handle the agent function received). Returns the SDK's RunResult.

    ``api`` picks the OpenAI API the models use (``responses`` or ``chat_completions``); ``runner_kwargs``
    go to ``Runner.run`` (``context``, ``max_turns``, ``hooks``, ``run_config``, ...). Called inside a
    durable run (from a guardrail), it runs in a scope of that run, so its calls are steps too. Not from
    inside a function tool: the tool is a step, and steps do not nest (use ``sdk_agent.as_tool(...)``).
    """
    from agents import Runner

    from ._openai_agents.handle import Handle
    from ._openai_agents.scope import top_level

    if api not in ("responses", "chat_completions"):
        raise ValueError(f"api must be 'responses' or 'chat_completions', not {api!r}")
    handle = Handle(agent)
    config = _checked(handle, sdk_agent, input, runner_kwargs)
    parent = _scope.current()
    scope = parent.nested_run(_nested_label()) if parent is not None and parent.handle.agent is agent \
        else top_level(handle)
    with _scope.entered(scope):
        return await Runner.run(sdk_agent, input, run_config=_run_config(config, agent, api), **runner_kwargs)


def run_sync(agent: Any, sdk_agent: SDKAgent[Any], input: Any, *, api: Api = "responses",
             **runner_kwargs: Any) -> RunResult:
    """:func:`run` for a synchronous agent function: runs it in a new event loop (not inside a running one)."""
    return asyncio.run(run(agent, sdk_agent, input, api=api, **runner_kwargs))


def run_streamed(agent: Any, sdk_agent: SDKAgent[Any], input: Any, *, api: Api = "responses",
                 **runner_kwargs: Any) -> RunResultStreaming:
    """Like ``Runner.run_streamed``: events as the model produces them on the first run, every model call a
    durable streamed step (replayed event for event after a crash, without a request) and every
    function-tool run a step. Needs the async handle (an ``async def`` agent function) and a running loop.
    """
    from agents import Runner

    from ._openai_agents.handle import Handle
    from ._openai_agents.scope import top_level

    handle = Handle(agent)
    if not handle.is_async:
        raise NotDurable("run_streamed needs the async handle", feature="streaming", agent_id=handle.agent_id,
                         hint="make the agent function async def, or use run_sync")
    config = _checked(handle, sdk_agent, input, runner_kwargs)
    parent = _scope.current()
    scope = parent.nested_run(_nested_label()) if parent is not None and parent.handle.agent is agent \
        else top_level(handle)
    with _scope.entered(scope):  # the run's task is created here and copies the scope
        return Runner.run_streamed(sdk_agent, input, run_config=_run_config(config, agent, api), **runner_kwargs)
