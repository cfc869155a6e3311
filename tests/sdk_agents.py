"""OpenAI Agents SDK agents for the integration tests, importable by child processes.

Each tool appends a line to the file named by ``count_file`` every time it really runs, so a test can
count executions across SIGKILLed processes. ``SDK_TEST_SELF_KILL=<tool>`` makes that tool SIGKILL its
own process the first time it runs (when the count file holds no line of it yet).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from agents import Agent as SDKAgent
from agents import RunContextWrapper, function_tool

from agentshards.integrations import openai_agents

MODEL = "gpt-4o-mini"


def _ran(count_file: str, line: str) -> None:
    path = Path(count_file)
    earlier = path.read_text().splitlines() if path.exists() else []
    with path.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    tool = line.split(" ", 1)[0]
    if os.environ.get("SDK_TEST_SELF_KILL") == tool and not any(e.startswith(tool + " ") for e in earlier):
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


def math_agent(agent: Any, question: str, count_file: str, api: str = "responses") -> dict[str, Any]:
    """An agentshards agent function running the SDK math agent durably; returns what the test compares."""
    result = openai_agents.run_sync(agent, math_agent_sdk(), question, api=api,  # type: ignore[arg-type]
                                    context={"count_file": count_file})
    return {"final_output": result.final_output,
            "items": [type(item).__name__ for item in result.new_items],
            "last_agent": result.last_agent.name}
