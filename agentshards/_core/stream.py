"""Streamed LLM answers (``stream=True``) as journaled steps: live on the first run, replayed after.

A streamed call is one step, like any other LLM call, but it completes only when its stream does. The
first run hands the caller each chunk (Chat Completions) or event (Responses API) as it arrives; once the
stream is complete, the step records every chunk's JSON and the assembled final answer, and the ledger
records the cost from the streamed usage (the usage chunk, or ``response.completed``). A replay rebuilds
the same objects from that record, in the same order, without a request. Both runs build each object the
same way from the same JSON, so they compare equal chunk by chunk.

The record is ``{"final": answer, "shared": {...}, "events": [...]}``: every chunk's JSON as the provider
sent it (obfuscation, logprobs, fields a newer API adds: nothing of ours rebuilds them), except that the
top-level fields equal in every chunk (a chat chunk's id, model, created, fingerprint: about 150 of its
~250 bytes) are stored once in ``shared``. A replayed chunk is ``{**shared, **event}``, the same JSON.

Failures: the retry policy covers the request until its first chunk arrives. A stream that breaks after
that raises to the caller and is not recorded: its attempt stays in flight and a resumed run sends it
again (``RunConfig(in_flight=...)`` decides). It is not retried behind the caller's back, because the
caller has already seen chunks that a new answer would contradict.

A caller that stops reading early: the rest of the stream is read and recorded when the stream is closed
(``close()``, the end of a ``with`` block), before the same thread's next step, or when the run ends. So
the journal always holds the complete answer and the exact cost, and a replay shows the caller the same
prefix it saw; the price is that the whole answer is paid for, as it would be without streaming.
"""

from __future__ import annotations

import logging
import threading
import typing
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import pydantic
from openai import BaseModel as OpenAIModel
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from .._base.errors import LLMError
from . import codec as _codec
from .journal import StepRecord
from .llm import Rejected, answer_of, record_cost, request_text, send_request
from .steps import LLM, StepCall, StepOptions, StepRunner

log = logging.getLogger("agentshards")
_E = TypeVar("_E")
CHAT, RESPONSES = "chat.completions", "responses"
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""Responses API events that carry the final response: the answer is complete (and priced)."""


def chat_stream(agent: StepRunner, options: StepOptions, kwargs: dict[str, Any]) -> ChatCompletionStream:
    """``chat.completions.create(..., stream=True)``."""
    return ChatCompletionStream(_open(agent, options, CHAT, kwargs))


def response_stream(agent: StepRunner, options: StepOptions, kwargs: dict[str, Any]) -> ResponseEventStream:
    """``responses.create(..., stream=True)``."""
    return ResponseEventStream(_open(agent, options, RESPONSES, kwargs))


def _open(agent: StepRunner, options: StepOptions, endpoint: str, kwargs: dict[str, Any]) -> _Source:
    """The replayed stream of a recorded call, or a live one.

    The live stream holds the step (its name and this thread's turn) until it is complete, broken or
    closed; the step is recorded when it completes.
    """
    request = dict(kwargs)
    stream_options = request.get("stream_options") or {}
    if endpoint == CHAT and isinstance(stream_options, dict) and "include_usage" not in stream_options:
        request["stream_options"] = {**stream_options, "include_usage": True}  # the usage chunk: exact ledger
    input_text = request_text(agent, endpoint, kwargs)
    thread = threading.get_ident()
    name = agent._claim(options.name)
    held = False
    try:
        found = agent._replay_or_call(name, LLM, input_text, options)
        if isinstance(found, StepRecord):
            return _Recorded(_codec.loads(answer_of(agent, found)), endpoint)
        live = _Live(agent, found, endpoint, input_text, thread,
                     wants_usage=_wants_usage(request) if endpoint == CHAT else True)
        sent = send_request(agent, found, endpoint, request, live.start)
        if isinstance(sent, Rejected):
            answer_of(agent, agent._record(found, LLM, input_text, sent.json, "error"))  # raises
        held = True
        agent._hold_open(live.finish)
        return live
    finally:
        if not held:
            agent._release(thread)


def _wants_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# -- what a stream's chunks come from ---------------------------------------------------------------------

class _Source:
    """Chunk JSON in order, and the final answer once it is complete."""

    endpoint: str

    def next_json(self) -> dict[str, Any] | None:
        """The next chunk's JSON, or None at the end of a complete stream."""
        raise NotImplementedError

    def final(self) -> dict[str, Any]:
        """The assembled final answer (reading the rest of the stream first)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Recorded(_Source):
    """A recorded stream: its chunks and final answer, from the journal."""

    def __init__(self, stored: dict[str, Any], endpoint: str) -> None:
        self.endpoint = endpoint
        shared = stored.get("shared") or {}
        self._events: list[dict[str, Any]] = [{**shared, **event} for event in stored["events"]]
        self._final: dict[str, Any] = stored["final"]
        self._next = 0

    def next_json(self) -> dict[str, Any] | None:
        if self._next == len(self._events):
            return None
        self._next += 1
        return self._events[self._next - 1]

    def final(self) -> dict[str, Any]:
        return self._final

    def close(self) -> None:
        self._next = len(self._events)


class _Live(_Source):
    """The provider's stream as it arrives: every chunk kept, the step recorded when it is complete.

    States: ``open`` (chunks arriving), ``recorded`` (complete and journaled) or ``broken`` (failed or
    ended short: nothing recorded, its attempt in flight).
    """

    def __init__(self, agent: StepRunner, call: StepCall, endpoint: str, input_text: str, thread: int, *,
                 wants_usage: bool) -> None:
        self.endpoint = endpoint
        self._agent = agent
        self._call = call
        self._input_text = input_text
        self._thread = thread
        self._wants_usage = wants_usage
        self._events: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._state = "open"
        self._final: dict[str, Any] | None = None
        self._lock = threading.RLock()

    def start(self, response: Any, number: int, started: float) -> _Live:
        """Take the client's stream and wait for its first chunk: until then, a failure is retried."""
        try:
            first = next(response)  # the SDK's Stream is its own iterator
        except StopIteration:
            response.close()
            raise LLMError("the stream ended before its first chunk", agent_id=self._agent.agent_id,
                           step=self._call.name, hint="nothing was recorded; re-run to send it again") from None
        except BaseException:
            response.close()
            raise
        self._response, self._number, self._started = response, number, started
        self._pending = _dump(first)
        return self

    def next_json(self) -> dict[str, Any] | None:
        with self._lock:
            if self._state == "recorded":
                return None
            if self._state == "broken":
                raise LLMError("the stream broke earlier; its answer was not recorded",
                               agent_id=self._agent.agent_id, step=self._call.name,
                               hint="a resumed run sends the request again")
            if self._pending is not None:
                data, self._pending = self._pending, None
                self._events.append(data)
                return data
            try:
                chunk = next(self._response)
            except StopIteration:
                self._complete()
                return None
            except BaseException:
                self._break()
                raise
            data = _dump(chunk)
            self._events.append(data)
            return data

    def final(self) -> dict[str, Any]:
        self.finish()
        if self._final is None:
            raise LLMError("the stream broke; there is no final answer", agent_id=self._agent.agent_id,
                           step=self._call.name, hint="a resumed run sends the request again")
        return self._final

    def finish(self) -> None:
        """Read the rest of the stream (the caller stopped early), so the step is complete and recorded."""
        with self._lock:
            while self._state == "open" and self.next_json() is not None:
                pass

    def close(self) -> None:
        self.finish()

    def _complete(self) -> None:
        """The stream ended: record it if it is complete, else it is broken (an answer cut short)."""
        final = _assemble(self.endpoint, self._events, self._wants_usage)
        if final is None:
            self._break()
            raise LLMError("the stream ended before its final chunk", agent_id=self._agent.agent_id,
                           step=self._call.name, hint="nothing was recorded; a resumed run sends it again")
        agent, call = self._agent, self._call
        try:
            record_cost(agent, call, self._number, final, self._started)
            shared = _shared(self._events)
            events = [{k: v for k, v in event.items() if k not in shared} for event in self._events]
            output = _codec.dumps({"final": final, "shared": shared, "events": events}, agent_id=agent.agent_id,
                                  step=call.name)
            agent._record(call, LLM, self._input_text, output, "ok")
        except BaseException:
            self._break()
            raise
        self._final, self._state = final, "recorded"
        self._let_go()

    def _break(self) -> None:
        self._state = "broken"
        self._response.close()
        self._let_go()

    def _let_go(self) -> None:
        self._agent._let_go(self._thread)
        self._agent._release(self._thread)


def _shared(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level fields every event has, with the same value: stored once."""
    first = events[0]
    return {key: value for key, value in first.items()
            if all(key in event and event[key] == value for event in events[1:])}


def _dump(chunk: Any) -> dict[str, Any]:
    data: dict[str, Any] = chunk.model_dump(mode="json", exclude_unset=True)
    return data


def _assemble(endpoint: str, events: list[dict[str, Any]], wants_usage: bool) -> dict[str, Any] | None:
    """The final answer of a stream that ended, or None when it ended short (no finish, no usage)."""
    if endpoint == RESPONSES:
        ends = [e for e in events if e.get("type") in _RESPONSE_ENDS]
        return ends[-1]["response"] if ends else None
    finished = any(c.get("finish_reason") for e in events for c in e.get("choices") or [])
    if not finished or (wants_usage and not any(e.get("usage") for e in events)):
        return None
    return chat_completion_of(events)


def chat_completion_of(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completion a stream's chunks (as JSON) add up to, as the API would have sent it whole.

    Written out rather than taken from the SDK's ``ChatCompletionStreamState``: that one rebuilds a model
    snapshot per chunk (about 0.5 ms a chunk, measured), this is a few dict updates. Assembled: role,
    content, refusal, tool calls (by index: id, type, name, arguments), content/refusal logprobs, finish
    reason, usage. Anything else a chunk carries is still in the recorded chunks.
    """
    head = chunks[0]
    completion: dict[str, Any] = {"id": head.get("id"), "object": "chat.completion", "created": head.get("created"),
                                  "model": head.get("model")}
    for key in ("system_fingerprint", "service_tier"):
        if key in head:
            completion[key] = head[key]
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for part in chunk.get("choices") or []:
            choice = choices.setdefault(part["index"], {"index": part["index"], "finish_reason": None,
                                                        "logprobs": None, "message": {"role": "assistant"}})
            message, delta = choice["message"], part.get("delta") or {}
            if delta.get("role"):
                message["role"] = delta["role"]
            for key in ("content", "refusal"):
                if delta.get(key) is not None:
                    message[key] = (message.get(key) or "") + delta[key]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                while len(calls) <= call["index"]:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                into, function = calls[call["index"]], call.get("function") or {}
                into.update({key: call[key] for key in ("id", "type") if call.get(key)})
                into["function"]["name"] += function.get("name") or ""
                into["function"]["arguments"] += function.get("arguments") or ""
            for key, tokens in (part.get("logprobs") or {}).items():
                if tokens:
                    logprobs = choice["logprobs"] = choice["logprobs"] or {}
                    logprobs.setdefault(key, []).extend(tokens)
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    for choice in choices.values():
        choice["message"].setdefault("content", None)
    completion["choices"] = [choices[index] for index in sorted(choices)]
    return completion


# -- the objects the caller iterates ----------------------------------------------------------------------

_M = TypeVar("_M", bound=pydantic.BaseModel)


def _model(cls: type[_M], data: dict[str, Any]) -> _M:
    """Validated when complete, else constructed leniently like the SDK does (as ``llm._rebuild``)."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError:
        return cls.construct(**data)


_event_classes: dict[str, type[pydantic.BaseModel]] = {}


def _response_event(data: dict[str, Any]) -> ResponseStreamEvent:
    """A Responses API event as its typed class, chosen by its ``type`` like the SDK's union does."""
    if not _event_classes:
        union = typing.get_args(ResponseStreamEvent)[0]
        for cls in typing.get_args(union):
            for literal in typing.get_args(cls.model_fields["type"].annotation):
                _event_classes[literal] = cls
    cls = _event_classes.get(str(data.get("type")))
    if cls is None:  # a type this SDK does not know: kept as the SDK would, a loose model
        return typing.cast(ResponseStreamEvent, OpenAIModel.construct(**data))
    return typing.cast(ResponseStreamEvent, _model(cls, data))


class DurableStream(Generic[_E]):
    """What ``create(..., stream=True)`` returns: iterate it for the chunks; use it as a context manager
    (or call :meth:`close`) to stop early, which reads and records the rest (see the module docs)."""

    def __init__(self, source: _Source, build: Callable[[dict[str, Any]], _E]) -> None:
        self._source = source
        self._build = build

    def __iter__(self) -> Iterator[_E]:
        return self

    def __next__(self) -> _E:
        data = self._source.next_json()
        if data is None:
            raise StopIteration
        return self._build(data)

    def close(self) -> None:
        """Stop reading: the rest of a live stream is read and recorded (the answer is paid for anyway)."""
        self._source.close()

    def __enter__(self) -> DurableStream[_E]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not hide the caller's own error behind one of reading the rest
            self.close()
        except Exception:  # logged; the caller's exception is the one that matters
            log.warning("could not read the rest of a stream after %r", exc,
                                                     exc_info=True)


class ChatCompletionStream(DurableStream[ChatCompletionChunk]):
    """A durable Chat Completions stream of ``ChatCompletionChunk`` objects."""

    def __init__(self, source: _Source) -> None:
        super().__init__(source, lambda data: _model(ChatCompletionChunk, data))

    def get_final_completion(self) -> ChatCompletion:
        """The whole answer assembled from the chunks (the rest of the stream is read first)."""
        return _model(ChatCompletion, self._source.final())


class ResponseEventStream(DurableStream[ResponseStreamEvent]):
    """A durable Responses API stream of ``ResponseStreamEvent`` objects."""

    def __init__(self, source: _Source) -> None:
        super().__init__(source, _response_event)

    def get_final_response(self) -> Response:
        """The final response, from ``response.completed`` (the rest of the stream is read first)."""
        return _model(Response, self._source.final())




__all__ = ["ChatCompletionStream", "DurableStream", "ResponseEventStream", "chat_stream", "response_stream"]
