"""The fake server's streaming: a complete answer cut into the server-sent events the real API sends.

Streams are derived from the complete answer (the one a non-streaming request gets), never built on their
own, so both modes always agree and a new kind of answer (another output item type) needs only its events
here. Chat Completions: ``chat.completion.chunk`` objects (role, content or tool-call deltas, a finish
reason, a usage chunk when ``stream_options.include_usage``), then ``[DONE]``. Responses API: typed events
with sequence numbers, from ``response.created`` to ``response.completed`` (which carries the usage).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

Event = dict[str, Any]


def events(chat: bool, answer: dict[str, Any], body: dict[str, Any]) -> list[bytes]:
    """The SSE frames of ``answer`` (a chat completion if ``chat``, else a response), ready to send."""
    if chat:
        options = body.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        frames = [f"data: {json.dumps(chunk)}\n\n" for chunk in chat_chunks(answer, include_usage=usage)]
        frames.append("data: [DONE]\n\n")
    else:
        frames = [f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in response_events(answer)]
    return [frame.encode() for frame in frames]


def pieces(text: str) -> list[str]:
    """Word-sized deltas (a word and the space after it), as a tokenizer roughly would."""
    return re.findall(r"\s*\S+\s*", text) or [text]


# -- Chat Completions ---------------------------------------------------------------------------------------

def chat_chunks(completion: dict[str, Any], *, include_usage: bool) -> list[Event]:
    """The ``chat.completion.chunk`` objects of one completion (one choice per chunk, like the API)."""
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"], "system_fingerprint": completion.get("system_fingerprint")}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> Event:
        out: Event = {**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    chunks: list[Event] = []
    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        chunks.append(chunk(index, {"role": "assistant", "content": "" if message.get("content") is not None
                                    else None, "refusal": None}))
        for piece in pieces(message["content"]) if message.get("content") else []:
            chunks.append(chunk(index, {"content": piece}))
        for position, call in enumerate(message.get("tool_calls") or []):
            chunks.append(chunk(index, {"tool_calls": [
                {"index": position, "id": call["id"], "type": call["type"],
                 "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            for piece in pieces(call["function"]["arguments"]):
                chunks.append(chunk(index, {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}))
        chunks.append(chunk(index, {}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**head, "choices": [], "usage": completion.get("usage")})
    return chunks


# -- Responses API ------------------------------------------------------------------------------------------

def response_events(response: dict[str, Any]) -> list[Event]:
    """The typed events of one response, numbered in order; one generator per output item type."""
    started = {**copy.deepcopy(response), "status": "in_progress", "output": [], "usage": None}
    out: list[Event] = [{"type": "response.created", "response": started},
                        {"type": "response.in_progress", "response": started}]
    for index, item in enumerate(response["output"]):
        itemize = _ITEM_EVENTS.get(item["type"])
        if itemize is None:
            raise ValueError(f"no stream events for output items of type {item['type']!r}")
        out.append({"type": "response.output_item.added", "output_index": index, "item": _opened(item)})
        out.extend(itemize(index, item))
        out.append({"type": "response.output_item.done", "output_index": index, "item": item})
    out.append({"type": "response.completed", "response": response})
    return [{**event, "sequence_number": number} for number, event in enumerate(out)]


def _opened(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as ``response.output_item.added`` shows it: in progress, nothing generated yet."""
    opened = {**item, "status": "in_progress"}
    if item["type"] == "message":
        opened["content"] = []
    elif item["type"] == "function_call":
        opened["arguments"] = ""
    return opened


def _message_events(index: int, item: dict[str, Any]) -> Iterator[Event]:
    where = {"item_id": item["id"], "output_index": index}
    for part_index, part in enumerate(item["content"]):
        at = {**where, "content_index": part_index}
        yield {"type": "response.content_part.added", **at, "part": {**part, "text": ""}}
        for piece in pieces(part["text"]):
            yield {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
        yield {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []}
        yield {"type": "response.content_part.done", **at, "part": part}


def _function_call_events(index: int, item: dict[str, Any]) -> Iterator[Event]:
    where = {"item_id": item["id"], "output_index": index}
    for piece in pieces(item["arguments"]):
        yield {"type": "response.function_call_arguments.delta", **where, "delta": piece}
    yield {"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"]}


_ITEM_EVENTS: dict[str, Callable[[int, dict[str, Any]], Iterator[Event]]] = {
    "message": _message_events,
    "function_call": _function_call_events,
}
"""Output item type -> the events between its ``output_item.added`` and ``output_item.done``."""
