"""Scripted tool-using conversations for the fake LLM server: "call tool X with args Y, then answer Z".

Agent frameworks (the OpenAI Agents SDK, for one) loop until the model stops asking for tools, so a fake
that always calls a tool never lets them finish. A script says what the model does at each turn. The
turn is read from the request itself, from how many tool results the conversation already carries, so
the same request always gets the same kind of answer: a resumed agent that re-sends a request whose
answer was lost gets what the first attempt would have got, whatever happened in between.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CALL_PREFIX = "call_fake-"


@dataclass(frozen=True)
class ToolCall:
    """One function call the scripted model makes: the tool's name and its JSON arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


Turn = Sequence[ToolCall] | str
"""One model turn: the tool calls it makes (several run in parallel), or its final text answer. In the
answer, ``{outputs}`` is replaced by the tool results the conversation holds, joined by ``", "``."""


@dataclass(frozen=True)
class AgentScript:
    turns: tuple[Turn, ...]

    def turn_for(self, tool_results: list[str]) -> Turn:
        """The turn whose tool calls would all have been answered by ``tool_results``: turn k once the
        calls of turns 0..k-1 have their results. Past the script's end, the last turn again."""
        answered = 0
        for turn in self.turns:
            if answered == len(tool_results):
                return turn
            answered += len(turn) if not isinstance(turn, str) else 0
        return self.turns[-1]


Scripts = dict[str | None, AgentScript]
"""Scripts by the instructions (system prompt) of the agent they answer; ``None`` answers any other."""


def _pick(scripts: Scripts, instructions: Any) -> AgentScript | None:
    return scripts.get(instructions if isinstance(instructions, str) else None) or scripts.get(None)


def _chat_instructions(body: dict[str, Any]) -> Any:
    messages = body.get("messages") or []
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    return first.get("content") if first.get("role") in ("system", "developer") else None


def _final_text(text: str, tool_results: list[str]) -> str:
    return text.replace("{outputs}", ", ".join(tool_results))


def _responses_tool_results(body: dict[str, Any]) -> list[str]:
    items = body.get("input")
    if not isinstance(items, list):
        return []
    return [str(item.get("output", "")) for item in items
            if isinstance(item, dict) and item.get("type") == "function_call_output"]


def _chat_tool_results(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content", "")) for m in body.get("messages") or []
            if isinstance(m, dict) and m.get("role") == "tool"]


def _usage_in(text: str) -> int:
    return len(text.split()) + 4


def scripted_response(scripts: Scripts, serial: int, body: dict[str, Any]) -> dict[str, Any] | None:
    """A Responses API answer following the script for the request's instructions: ``function_call`` items,
    or a message. None when no script applies."""
    script = _pick(scripts, body.get("instructions"))
    if script is None:
        return None
    results = _responses_tool_results(body)
    turn = script.turn_for(results)
    output: list[dict[str, Any]]
    if isinstance(turn, str):
        text = _final_text(turn, results)
        output = [{"type": "message", "id": f"msg_fake-{serial}", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    else:
        text = ""
        output = [{"type": "function_call", "id": f"fc_fake-{serial}-{i}", "call_id": f"{CALL_PREFIX}{serial}-{i}",
                   "name": call.name, "status": "completed", "arguments": json.dumps(call.arguments)}
                  for i, call in enumerate(turn)]
    input_tokens = _usage_in(json.dumps(body.get("input", ""), sort_keys=True))
    output_tokens = max(1, len(text.split()))
    return {
        "id": f"resp_fake-{serial}", "object": "response", "created_at": int(time.time()),
        "model": str(body.get("model", "fake-model")), "status": "completed", "output": output,
        "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens,
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    }


def scripted_chat_completion(scripts: Scripts, serial: int, body: dict[str, Any],
                             model: str) -> dict[str, Any] | None:
    """A Chat Completions answer following the script for the request's system prompt: an assistant message
    with ``tool_calls``, or text. None when no script applies."""
    script = _pick(scripts, _chat_instructions(body))
    if script is None:
        return None
    results = _chat_tool_results(body)
    turn = script.turn_for(results)
    message: dict[str, Any]
    if isinstance(turn, str):
        text = _final_text(turn, results)
        message, finish = {"role": "assistant", "content": text}, "stop"
    else:
        text = ""
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"{CALL_PREFIX}{serial}-{i}", "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
            for i, call in enumerate(turn)]}
        finish = "tool_calls"
    prompt_tokens = _usage_in(json.dumps(body.get("messages") or [], sort_keys=True))
    completion_tokens = max(1, len(text.split()))
    return {
        "id": f"chatcmpl-fake-{serial}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None, "message": message}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": "fp_agentshards_fake",
    }
