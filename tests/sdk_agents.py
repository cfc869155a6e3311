"""OpenAI Agents SDK agents for the integration tests, importable by child processes.

Each tool appends a line (``add 2 3``) to the file named by ``count_file`` every time it really runs, so a
test can count executions across SIGKILLed processes. ``SDK_TEST_SELF_KILL=<line>`` makes the tool run that
writes that line SIGKILL its own process the first time (before its result can be recorded).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from agents import Agent as SDKAgent
from agents import GuardrailFunctionOutput, RunContextWrapper, function_tool, input_guardrail

from agentshards.integrations import openai_agents

MODEL = "gpt-4o-mini"


OFFICIAL_CHECKS = ("agents.models.openai_responses", "agents.models.chatcmpl_helpers")
"""Where the SDK asks whether its client talks to api.openai.com; told yes, it draws a random prompt cache
key per Runner.run (and sends ``store``), which is what a resumed run must survive."""


def _ran(count_file: str, line: str) -> None:
    path = Path(count_file)
    earlier = path.read_text().splitlines() if path.exists() else []
    with path.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    if os.environ.get("SDK_TEST_SELF_KILL") == line and line not in earlier:
        os.kill(os.getpid(), signal.SIGKILL)


@function_tool
def add(ctx: RunContextWrapper[Any], a: int, b: int) -> int:
    """Add two integers."""
    _ran(ctx.context["count_file"], f"add {a} {b}")
    return a + b


@function_tool
def mul(ctx: RunContextWrapper[Any], a: int, b: int) -> int:
    """Multiply two integers."""
    _ran(ctx.context["count_file"], f"mul {a} {b}")
    return a * b


def math_agent_sdk(model: str = MODEL) -> SDKAgent[Any]:
    return SDKAgent(name="math", instructions="Answer with the tools.", model=model, tools=[add, mul])


def _summary(result: Any) -> dict[str, Any]:
    return {"final_output": result.final_output, "items": [type(item).__name__ for item in result.new_items],
            "last_agent": result.last_agent.name}


def math_agent(agent: Any, question: str, count_file: str, api: str = "responses") -> dict[str, Any]:
    """A sync agent function running the SDK math agent durably; returns what the tests compare."""
    return _summary(openai_agents.run_sync(agent, math_agent_sdk(), question, api=api,  # type: ignore[arg-type]
                                           context={"count_file": count_file}))


async def amath_agent(agent: Any, question: str, count_file: str, api: str = "responses") -> dict[str, Any]:
    """The same on the async handle: ``await run(...)``."""
    return _summary(await openai_agents.run(agent, math_agent_sdk(), question, api=api,  # type: ignore[arg-type]
                                            context={"count_file": count_file}))


ORCHESTRATOR, CALCULATOR, REPORTER, CHECKER = "Orchestrate.", "Calculate.", "Report.", "Check."
"""The instructions of the team's agents: the fake server scripts each agent by them."""


def team_sdk() -> SDKAgent[Any]:
    """An orchestrator with an agent used as a tool, a handoff, and an input guardrail that runs an agent."""
    calculator = SDKAgent(name="calculator", instructions=CALCULATOR, model=MODEL, tools=[add])
    reporter = SDKAgent(name="reporter", instructions=REPORTER, model=MODEL)
    checker = SDKAgent(name="checker", instructions=CHECKER, model=MODEL)

    @input_guardrail
    async def checked(ctx: RunContextWrapper[Any], agent: SDKAgent[Any], input: Any) -> GuardrailFunctionOutput:
        verdict = await openai_agents.run(ctx.context["agent"], checker, input)  # a nested durable run
        return GuardrailFunctionOutput(output_info=verdict.final_output,
                                       tripwire_triggered=verdict.final_output != "safe")

    return SDKAgent(name="orchestrator", instructions=ORCHESTRATOR, model=MODEL,
                    tools=[calculator.as_tool("calculator", "Calculates.")], handoffs=[reporter],
                    input_guardrails=[checked])


async def ateam_agent(agent: Any, question: str, count_file: str, stop_file: str) -> dict[str, Any]:
    """The team, interrupted after its SDK run the first time (see stop_once_agent)."""
    result = await openai_agents.run(agent, team_sdk(), question, context={"count_file": count_file, "agent": agent})
    _stop_once(stop_file)
    return _summary(result)


async def aretrying_agent(agent: Any, question: str, count_file: str) -> dict[str, Any]:
    """The math agent configured to retry failed model calls itself (up to 3 times, on any 500)."""
    from agents import ModelRetrySettings, ModelSettings, retry_policies

    retrying = ModelSettings(retry=ModelRetrySettings(max_retries=3, policy=retry_policies.http_status([500])))
    sdk_agent = math_agent_sdk().clone(model_settings=retrying)
    return _summary(await openai_agents.run(agent, sdk_agent, question, context={"count_file": count_file}))


async def aslow_once_agent(agent: Any, question: str, count_file: str, stop_file: str) -> dict[str, Any]:
    """The math agent whose ``add`` has a 0.2 s timeout and, on its first run only, takes 5 s: the model is
    told it timed out. Interrupted after its SDK run the first time (see stop_once_agent)."""
    import asyncio

    @function_tool(name_override="add", timeout=0.2)
    async def slow_add(a: int, b: int) -> int:
        """Add two integers."""
        path = Path(count_file)
        first = not path.exists() or not any(line.startswith("add ") for line in path.read_text().splitlines())
        _ran(count_file, f"add {a} {b}")
        if first:
            await asyncio.sleep(5)
        return a + b

    sdk_agent = math_agent_sdk().clone(tools=[slow_add, mul])
    result = await openai_agents.run(agent, sdk_agent, question, context={"count_file": count_file})
    _stop_once(stop_file)
    return _summary(result)


async def atwice_agent(agent: Any, question: str, count_file: str, stop_file: str) -> list[dict[str, Any]]:
    """Two SDK runs in one agent function, the second with a guardrail running an agent beside its first
    model call. Interrupted after them the first time (see stop_once_agent)."""
    first = await amath_agent(agent, question, count_file)
    checker = SDKAgent(name="checker", instructions=CHECKER, model=MODEL)

    @input_guardrail
    async def checked(ctx: RunContextWrapper[Any], sdk_agent: SDKAgent[Any], input: Any) -> GuardrailFunctionOutput:
        verdict = await openai_agents.run(agent, checker, input)
        return GuardrailFunctionOutput(output_info=verdict.final_output, tripwire_triggered=False)

    guarded = math_agent_sdk().clone(input_guardrails=[checked])
    second = _summary(await openai_agents.run(agent, guarded, question, context={"count_file": count_file}))
    _stop_once(stop_file)
    return [first, second]


async def ahosted_agent(agent: Any, question: str, count_file: str) -> dict[str, Any]:
    """The math agent with a hosted tool beside its function tools: the provider runs it in the model call."""
    from agents import WebSearchTool

    sdk_agent = math_agent_sdk().clone(tools=[WebSearchTool(), add, mul])
    return _summary(await openai_agents.run(agent, sdk_agent, question, context={"count_file": count_file}))


@function_tool
def ticket(ctx: RunContextWrapper[Any], title: str) -> str:
    """Open a ticket (a side effect: keyed so that a re-run cannot open it twice)."""
    return f"{title}: {ctx.context['agent'].idempotency_key()}"


def keyed_agent(agent: Any, count_file: str) -> str:
    return str(openai_agents.run_sync(agent, math_agent_sdk().clone(tools=[ticket]), "open one",
                                      context={"agent": agent, "count_file": count_file}).final_output)


async def akeyed_agent(agent: Any, count_file: str) -> str:
    return str((await openai_agents.run(agent, math_agent_sdk().clone(tools=[ticket]), "open one",
                                        context={"agent": agent, "count_file": count_file})).final_output)


async def astreamed_agent(agent: Any, question: str, count_file: str, stop_file: str, api: str) -> dict[str, Any]:
    """The math agent run streamed: counts the events it saw; interrupted after it the first time."""
    result = openai_agents.run_streamed(agent, math_agent_sdk(), question, api=api,  # type: ignore[arg-type]
                                        context={"count_file": count_file})
    events = [event.type async for event in result.stream_events()]
    _stop_once(stop_file)
    return {**_summary(result), "raw_events": events.count("raw_response_event") > 0}


class Interrupted(BaseException):
    """Stops an agent function the way a crash does: not an agent error, so the run stays open."""


def _stop_once(stop_file: str) -> None:
    if not Path(stop_file).exists():
        Path(stop_file).write_text("stopped")
        raise Interrupted


def stop_once_agent(agent: Any, question: str, count_file: str, stop_file: str, api: str) -> dict[str, Any]:
    """The math agent, interrupted after its SDK run the first time: the second call replays every step."""
    out = math_agent(agent, question, count_file, api)
    _stop_once(stop_file)
    return out


async def astop_once_agent(agent: Any, question: str, count_file: str, stop_file: str, api: str) -> dict[str, Any]:
    out = await amath_agent(agent, question, count_file, api)
    _stop_once(stop_file)
    return out


def refused_agent(agent: Any, case: str) -> dict[str, str]:
    """An SDK run asking for something the integration refuses (``case`` says what): what it refused."""
    try:
        return {"output": _refused_run(agent, case)}
    except openai_agents.NotDurable as exc:
        return {"type": type(exc).__name__, "feature": exc.feature, "message": str(exc)}


def _refused_run(agent: Any, case: str) -> str:
    from agents import LocalShellTool, ModelSettings, RunConfig, SQLiteSession
    from agents.models.interface import ModelProvider
    from agents.models.openai_responses import OpenAIResponsesModel
    from openai import AsyncOpenAI

    @function_tool(needs_approval=True)
    def pay(amount: int) -> str:
        """Pay an amount."""
        return "paid"

    kwargs: dict[str, Any] = {}
    sdk_agent = math_agent_sdk()
    if case == "session":
        kwargs["session"] = SQLiteSession("conversation")
    elif case == "conversation_id":
        kwargs["conversation_id"] = "conv_123"
    elif case == "approval":
        sdk_agent = sdk_agent.clone(tools=[add, pay])
    elif case == "local_shell":
        shell = LocalShellTool(executor=lambda request: "done")
        helper = SDKAgent(name="ops", instructions="Run commands.", model=MODEL, tools=[shell])
        sdk_agent = sdk_agent.clone(handoffs=[helper])  # refused even one handoff away
    elif case == "hosted_mcp":
        from agents import HostedMCPTool

        mcp = HostedMCPTool(tool_config={"type": "mcp", "server_label": "docs", "server_url": "http://127.0.0.1:9"})
        sdk_agent = sdk_agent.clone(tools=[add, mcp])
    elif case == "model_object":
        sdk_agent = sdk_agent.clone(model=OpenAIResponsesModel(MODEL, AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")))
    elif case == "litellm":
        sdk_agent = sdk_agent.clone(handoffs=[SDKAgent(name="other", model="litellm/anthropic/claude")])
    elif case == "model_provider":
        class Provider(ModelProvider):
            def get_model(self, model_name: str | None) -> Any:
                raise AssertionError("never asked")

        kwargs["run_config"] = RunConfig(model_provider=Provider(), model_settings=ModelSettings())
    elif case == "streamed":  # on the sync handle
        return str(openai_agents.run_streamed(agent, sdk_agent, "hi"))
    run_input: Any = "hi"
    if case == "run_state":
        from agents import RunState

        run_input = RunState(RunContextWrapper(context={}), "hi", sdk_agent)
    return str(openai_agents.run_sync(agent, sdk_agent, run_input, **kwargs).final_output)
