"""Function tools as durable steps, and the tools that cannot be made durable refused.

Every model turn, the SDK hands the model the turn's tool list and then runs the calls the model made
from that same list. Each function tool in it is replaced (in the list, never the caller's object) by a
copy whose invoker runs the original as a durable step named after the model's call id: a resumed run
returns the recorded result and does not run the tool again. An agent used as a tool is not one step:
its own model calls and tools are, in a scope named after the call that invoked it.

What a tool returns reaches the SDK as it was recorded, on the first run as on a replay, so the model is
sent the same thing both times: JSON values as they are, pydantic models as their JSON dump, and the
SDK's ``ToolOutputText``/``ToolOutputImage``/``ToolOutputFileContent`` rebuilt as themselves.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from agentshards import ResultNotStorable

from . import scope as _scope
from .errors import NotDurable

_MARK = "__agentshards_durable__"
_OUTPUT_TAG = "__agentshards_sdk_output__"

_HOSTED = ("FileSearchTool", "WebSearchTool", "ImageGenerationTool", "CodeInterpreterTool", "ToolSearchTool",
           "HostedMCPTool")
"""Tools the provider runs inside the model call: their work is in the response, recorded with it."""


def _sdk_outputs() -> dict[str, Any]:
    from agents.tool import ToolOutputFileContent, ToolOutputImage, ToolOutputText

    return {cls.__name__: cls for cls in (ToolOutputText, ToolOutputImage, ToolOutputFileContent)}


def encode(value: Any, *, agent_id: str, step: str) -> Any:
    """``value`` as strict JSON, with the SDK's structured tool outputs tagged so they come back as such."""
    import pydantic

    if isinstance(value, pydantic.BaseModel):
        if type(value) in _sdk_outputs().values():
            return {_OUTPUT_TAG: type(value).__name__, "data": value.model_dump(mode="json", exclude_unset=True)}
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [encode(v, agent_id=agent_id, step=step) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: encode(v, agent_id=agent_id, step=step) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ResultNotStorable(f"the tool returned a {type(value).__name__}, which cannot be recorded",
                            agent_id=agent_id, step=step,
                            hint="return str, a JSON value, a pydantic model, or ToolOutputText/Image/FileContent")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        kind = value.get(_OUTPUT_TAG)
        if isinstance(kind, str) and set(value) == {_OUTPUT_TAG, "data"}:
            return _sdk_outputs()[kind].model_validate(value["data"])
        return {k: decode(v) for k, v in value.items()}
    return value


def _refuse(tool: Any, what: str, hint: str) -> NotDurable:
    name = getattr(tool, "name", type(tool).__name__)
    scope = _scope.current()
    return NotDurable(f"tool {name!r} ({type(tool).__name__}) {what}", feature=type(tool).__name__,
                      agent_id=scope.handle.agent_id if scope else None, hint=hint)


def check(tool: Any) -> None:
    """Refuse a tool whose work would run outside the journal, naming it."""
    from agents import FunctionTool

    kind = type(tool).__name__
    if isinstance(tool, FunctionTool):
        if tool.needs_approval is not False:
            raise _refuse(tool, "needs approval: run-state approvals are not durable",
                          "decide inside the tool (it runs once per call id), or drop needs_approval")
        return
    if kind == "HostedMCPTool":
        config = getattr(tool, "tool_config", {}) or {}
        if getattr(tool, "on_approval_request", None) is not None or config.get("require_approval") != "never":
            raise _refuse(tool, "may ask for approvals, which are not durable",
                          "give the hosted MCP tool require_approval='never'")
        return
    if kind in _HOSTED:
        return
    if kind == "ProgrammaticToolCallingTool":
        raise _refuse(tool, "runs provider-side code that calls tools in ways a replay cannot follow yet",
                      "let the model call the function tools itself")
    raise _refuse(tool, "runs on this machine outside the journal and cannot be made durable",
                  "wrap the work in a @function_tool: a function tool runs once per call id and is recorded")


def _with_timeout(tool: Any, original: Callable[[Any, str], Awaitable[Any]]) -> Callable[[Any, str], Awaitable[Any]]:
    """The tool's own ``timeout_seconds``, applied inside its step, as the SDK would apply it outside.

    The SDK sends the model a "timed out" message when a tool overruns. Applied outside the step, that
    message would not be recorded: a resumed run would run the tool again, perhaps get an answer this
    time, and send the next model call something other than its record. Inside, the message is the
    step's result. ``raise_exception`` tools raise ToolTimeoutError (nothing recorded, as any failure).
    """
    from agents.exceptions import ToolTimeoutError
    from agents.tool import default_tool_timeout_error_message

    timeout: float = tool.timeout_seconds

    async def invoke(ctx: Any, arguments: str) -> Any:
        try:
            return await asyncio.wait_for(original(ctx, arguments), timeout)
        except TimeoutError as exc:
            error = ToolTimeoutError(tool_name=tool.name, timeout_seconds=timeout)
            if tool.timeout_behavior == "raise_exception":
                raise error from exc
            if tool.timeout_error_function is None:
                return default_tool_timeout_error_message(tool_name=tool.name, timeout_seconds=timeout)
            message = tool.timeout_error_function(ctx, error)
            return await message if inspect.isawaitable(message) else message

    return invoke


def _durable_copy(tool: Any) -> Any:
    """A copy of the function tool whose invoker is a step keyed by the call id (an agent used as a tool:
    whose invoker opens the call's scope for the nested run's own steps)."""
    original: Callable[[Any, str], Awaitable[Any]] = tool.on_invoke_tool
    tool_name: str = tool.name
    timed = tool.timeout_seconds is not None and not tool._is_agent_tool
    if timed:
        original = _with_timeout(tool, original)

    if tool._is_agent_tool:
        async def invoke_agent(ctx: Any, arguments: str) -> Any:
            parent = _scope.current()
            if parent is None:
                return await original(ctx, arguments)
            with _scope.entered(parent.child(str(ctx.tool_call_id))):
                return await original(ctx, arguments)

        invoke = invoke_agent
    else:
        async def invoke_tool(ctx: Any, arguments: str) -> Any:
            scope = _scope.current()
            if scope is None:  # the copy outlived its run: behave like the original
                return await original(ctx, arguments)
            name = scope.tool_step(tool_name, str(ctx.tool_call_id))

            async def call_tool(_name: str, args: str) -> Any:
                return encode(await original(ctx, args), agent_id=scope.handle.agent_id, step=name)

            return decode(await scope.handle.step(name, call_tool, tool_name, arguments))

        invoke = invoke_tool
    setattr(invoke, _MARK, True)
    durable = copy.copy(tool)
    durable.on_invoke_tool = invoke
    if timed:
        durable.timeout_seconds = None  # applied inside the step instead
    return durable


def make_durable(tools: list[Any]) -> None:
    """Check every tool of this turn and put durable copies of the function tools in its place."""
    from agents import FunctionTool

    for index, tool in enumerate(tools):
        check(tool)
        if isinstance(tool, FunctionTool) and not getattr(tool.on_invoke_tool, _MARK, False):
            tools[index] = _durable_copy(tool)
