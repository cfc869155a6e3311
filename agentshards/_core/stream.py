"""Streamed LLM answers (``stream=True``) as journaled steps: live on the first run, replayed after.

A streamed call is one step, like any other LLM call, but it completes only when its stream does. The
first run hands the caller each chunk (Chat Completions) or event (Responses API) as it arrives; once the
stream is complete, the step records every chunk's JSON and the assembled final answer, and the ledger
records the cost from the streamed usage (the usage chunk, or ``response.completed``). A replay rebuilds
the same objects from that record, in the same order, without a request. Both runs build each object the
same way from the same JSON, so they compare equal chunk by chunk. Sync agents get an iterator, async
agents (``await ...create(..., stream=True)``) an async iterator; both share everything here but the I/O.

The record is ``{"final": answer, "shared": {...}, "events": [...]}``: every chunk's JSON as the provider
sent it (obfuscation, logprobs, fields a newer API adds: nothing of ours rebuilds them), except that the
top-level fields equal in every chunk (a chat chunk's id, model, created, fingerprint: about 150 of its
~250 bytes) are stored once in ``shared``. A replayed chunk is ``{**shared, **event}``, the same JSON.

Failures: the retry policy covers the request until its first chunk arrives. A stream that breaks after
that raises to the caller and is not recorded: its attempt stays in flight and a resumed run sends it
again (``RunConfig(in_flight=...)`` decides). It is not retried behind the caller's back, because the
caller has already seen chunks that a new answer would contradict.

A caller that stops reading early: the rest of the stream is read and recorded when the stream is closed
(``close()``/``aclose()``, the end of a ``with``/``async with`` block), before the same thread's (task's)
next step, or when the run ends. So the journal always holds the complete answer and the exact cost, and a
replay shows the caller the same prefix it saw; the price is that the whole answer is paid for, as it
would be without streaming. Until then the stream is the running step of its thread or task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic
from openai import BaseModel as OpenAIModel
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from .._base.errors import LLMError
from . import codec as _codec
from . import fence as _fence
from .journal import StepRecord
from .ledger import cost_of, usage_of
from .llm_call import RetryPolicy, _check_budget, _client, request_text, stored_answer
from .steps import LLM, StepBook, StepCall, StepOptions, StepRunner

if TYPE_CHECKING:
    import openai

    from .async_steps import AsyncStepRunner

log = logging.getLogger("agentshards")
_E = TypeVar("_E")
_Token = contextvars.Token[Any]
CHAT, RESPONSES = "chat.completions", "responses"
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""Responses API events that carry the final response: the answer is complete (and priced)."""


# -- opening a stream: a replay, or a live request ---------------------------------------------------------

def chat_stream(agent: StepRunner, options: StepOptions, kwargs: dict[str, Any]) -> ChatCompletionStream:
    """``chat.completions.create(..., stream=True)``."""
    return ChatCompletionStream(_open(agent, options, CHAT, kwargs))


def response_stream(agent: StepRunner, options: StepOptions, kwargs: dict[str, Any]) -> ResponseEventStream:
    """``responses.create(..., stream=True)``."""
    return ResponseEventStream(_open(agent, options, RESPONSES, kwargs))


async def async_chat_stream(agent: AsyncStepRunner, options: StepOptions, kwargs: dict[str, Any],
                            client: Callable[[], openai.AsyncOpenAI]) -> AsyncChatCompletionStream:
    """``await chat.completions.create(..., stream=True)`` on the async facade (``client`` is called only
    when the call is made, never on a replay)."""
    return AsyncChatCompletionStream(await _aopen(agent, options, CHAT, kwargs, client))


async def async_response_stream(agent: AsyncStepRunner, options: StepOptions, kwargs: dict[str, Any],
                                client: Callable[[], openai.AsyncOpenAI]) -> AsyncResponseEventStream:
    """``await responses.create(..., stream=True)`` on the async facade."""
    return AsyncResponseEventStream(await _aopen(agent, options, RESPONSES, kwargs, client))


def _request(endpoint: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What is sent: a chat request asks for the usage chunk (the ledger stays exact) unless the caller
    decided about it. The journal hashes the caller's own arguments, not this."""
    request = dict(kwargs)
    stream_options = request.get("stream_options") or {}
    if endpoint == CHAT and isinstance(stream_options, dict) and "include_usage" not in stream_options:
        request["stream_options"] = {**stream_options, "include_usage": True}
    return request


def _wants_usage(endpoint: str, request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return endpoint == RESPONSES or (isinstance(options, dict) and options.get("include_usage") is True)


def _open(agent: StepRunner, options: StepOptions, endpoint: str, kwargs: dict[str, Any]) -> _Recorded | _Live:
    """The replayed stream of a recorded call, or a live one that holds the step until it completes."""
    import openai
    import tenacity

    request, input_text = _request(endpoint, kwargs), request_text(agent, endpoint, kwargs)
    agent._finish_open_here()
    name, token = agent._claim(options.name)
    held = False
    try:
        input_hash = _codec.digest(input_text)
        replicated = agent._is_replicated(options, name, LLM)
        stored = agent._replayed(name, LLM, input_hash, input_text)
        if stored is not None:
            if replicated and stored.replicated_at is None:
                stored = agent._replicate(stored)
            return _Recorded(stored, endpoint, agent)
        agent._before_perform(name)
        call = StepCall(name, input_hash, options)
        _check_budget(agent, name)
        client = _client(agent._config.llm, agent.agent_id)
        create = client.chat.completions.create if endpoint == CHAT else client.responses.create
        policy = RetryPolicy(agent, call)
        live = _Live(agent, call, endpoint, input_text, _wants_usage(endpoint, request), token)

        def send() -> _Live:
            number = agent._journal.begin_attempt(agent.run_id, name, input_hash)
            agent._crash.reached("after_intent")
            started = time.monotonic()
            try:
                _fence.check_send(agent.agent_id)  # a fenced or stopping fleet worker sends nothing more
                response = create(**{"timeout": policy.request_timeout(), **request})
            except openai.APIStatusError:
                agent._journal.end_attempt(agent.run_id, name, number, "error")  # answered: not in flight
                raise
            live.started(response, _first(agent, name, response), number, started)
            return live

        rejected: tuple[str, str] | None = None
        try:
            tenacity.Retrying(**policy.tenacity_kwargs())(send)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            rejected = policy.rejected(exc)
        except openai.APITimeoutError as exc:
            timeout = policy.timed_out(exc)
            if timeout is not None:
                raise timeout from exc
            raise
        if rejected is not None:
            stored = agent._record(call, LLM, input_text, *rejected)
            if replicated:
                agent._replicate(stored)
            return _Recorded(stored, endpoint, agent)  # raises the recorded rejection, as its replay will
        live.claim = agent._hold_open(live.finish)
        held = True
        return live
    finally:
        if not held:
            agent._release(token)


async def _aopen(agent: AsyncStepRunner, options: StepOptions, endpoint: str, kwargs: dict[str, Any],
                 client_for: Callable[[], openai.AsyncOpenAI]) -> _Recorded | _AsyncLive:
    """``_open`` for an async agent: the request awaited, journal work through the agent's offload."""
    import openai
    import tenacity

    request, input_text = _request(endpoint, kwargs), request_text(agent, endpoint, kwargs)
    await agent._finish_open_here()
    name, token = agent._claim(options.name)
    held = False
    try:
        input_hash = _codec.digest(input_text)
        replicated = agent._is_replicated(options, name, LLM)
        stored = agent._replayed(name, LLM, input_hash, input_text)
        if stored is not None:
            if replicated and stored.replicated_at is None:
                stored = await asyncio.to_thread(agent._replicate, stored)  # a wait, never on the loop
            return _Recorded(stored, endpoint, agent)
        if agent._replays:
            await agent._io(agent.flush_ledger)
        agent._before_perform(name)
        call = StepCall(name, input_hash, options)
        if agent._config.budget_usd is not None:
            await agent._io(_check_budget, agent, name)
        client = client_for()
        create = client.chat.completions.create if endpoint == CHAT else client.responses.create
        policy = RetryPolicy(agent, call)
        live = _AsyncLive(agent, call, endpoint, input_text, _wants_usage(endpoint, request), token)
        journal = agent._journal

        async def send() -> _AsyncLive:
            number = await agent._io(journal.begin_attempt, agent.run_id, name, input_hash)
            agent._crash.reached("after_intent")
            started = time.monotonic()
            try:
                _fence.check_send(agent.agent_id)  # a fenced or stopping fleet worker sends nothing more
                response = await create(**{"timeout": policy.request_timeout(), **request})
            except openai.APIStatusError:
                await agent._io(journal.end_attempt, agent.run_id, name, number, "error")
                raise
            live.started(response, await _afirst(agent, name, response), number, started)
            return live

        rejected: tuple[str, str] | None = None
        try:
            async with asyncio.timeout(policy.budget):  # the step's budget, until the first chunk
                await tenacity.AsyncRetrying(**policy.tenacity_kwargs())(send)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            rejected = policy.rejected(exc)
        except (openai.APITimeoutError, TimeoutError) as exc:
            timeout = policy.timed_out(exc)
            if timeout is not None:
                raise timeout from exc
            raise
        if rejected is not None:
            stored = await agent._io(agent._record, call, LLM, input_text, *rejected)
            if replicated:
                await asyncio.to_thread(agent._replicate, stored)
            return _Recorded(stored, endpoint, agent)  # raises the recorded rejection, as its replay will
        live.claim = agent._hold_open(live.finish)
        held = True
        return live
    finally:
        if not held:
            agent._release(token)


def _first(agent: StepBook, step: str, response: Any) -> Any:
    """The stream's first chunk: until it is here a failure is retried, like one of the request's own."""
    try:
        return next(response)  # the SDK's Stream is its own iterator
    except StopIteration:
        response.close()
        raise _ended_short(agent, step, "its first") from None
    except BaseException:
        response.close()
        raise


async def _afirst(agent: StepBook, step: str, response: Any) -> Any:
    try:
        return await response.__anext__()
    except StopAsyncIteration:
        await response.close()
        raise _ended_short(agent, step, "its first") from None
    except BaseException:
        await response.close()
        raise


def _ended_short(agent: StepBook, step: str, which: str) -> LLMError:
    return LLMError(f"the stream ended before {which} chunk", agent_id=agent.agent_id, step=step,
                    hint="nothing was recorded; a resumed run sends the request again")


# -- what a stream's chunks come from ---------------------------------------------------------------------

class _Recorded:
    """A recorded stream: its chunks and final answer, from the journal (a recorded rejection raises)."""

    def __init__(self, stored: StepRecord, endpoint: str, agent: StepBook) -> None:
        record = _codec.loads(stored_answer(agent, stored))
        shared = record.get("shared") or {}
        self._events: list[dict[str, Any]] = [{**shared, **event} for event in record["events"]]
        self._final: dict[str, Any] = record["final"]
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

    async def anext_json(self) -> dict[str, Any] | None:
        return self.next_json()

    async def afinal(self) -> dict[str, Any]:
        return self._final

    async def aclose(self) -> None:
        self.close()


class _Tape:
    """The chunks of a live stream as they arrive, and what completing it records.

    States: ``open`` (chunks arriving), ``recorded`` (complete and journaled) or ``broken`` (failed or ended
    short: nothing recorded, its attempt in flight). The sync and async live streams differ only in how
    they wait for a chunk and reach the journal.
    """

    claim: object = None

    def __init__(self, agent: StepBook, call: StepCall, endpoint: str, input_text: str, wants_usage: bool,
                 token: _Token) -> None:
        self._agent, self._call, self._endpoint, self._input_text = agent, call, endpoint, input_text
        self._wants_usage, self._token = wants_usage, token
        self._events: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._state = "open"
        self._final: dict[str, Any] | None = None
        self._response: Any = None
        self._number, self._started = 0, 0.0

    def started(self, response: Any, first: Any, number: int, started: float) -> None:
        """The request was answered and its first chunk read (attempt ``number``, sent at ``started``)."""
        self._response, self._number, self._started = response, number, started
        self._pending = _dump(first)

    def _take_pending(self) -> dict[str, Any] | None:
        """The first chunk (read while the request could still be retried), once; raises once broken."""
        if self._state == "broken":
            raise LLMError("the stream broke earlier; its answer was not recorded", agent_id=self._agent.agent_id,
                           step=self._call.name, hint="a resumed run sends the request again")
        data, self._pending = self._pending, None
        if data is not None:
            self._events.append(data)
        return data

    def _kept(self, chunk: Any) -> dict[str, Any]:
        data = _dump(chunk)
        self._events.append(data)
        return data

    def _final_or_break(self) -> dict[str, Any]:
        """The stream ended: its final answer, or (it ended short) LLMError with the stream broken."""
        final = _assemble(self._endpoint, self._events, self._wants_usage)
        if final is None:
            self._state = "broken"
            raise _ended_short(self._agent, self._call.name, "its final")
        return final

    def _commit(self, final: dict[str, Any]) -> StepRecord:
        """The journal work of a complete stream (sync: run inline, or through an async agent's offload):
        its cost in the ledger, then the step, as for an answer that came whole."""
        agent, call = self._agent, self._call
        usage = usage_of(final)
        agent._journal.record_answer(agent.run_id, call.name, self._number, agent.execution, usage,
                                     time.monotonic() - self._started, cost_of(usage, agent._config.llm.prices))
        agent._crash.reached("after_response")
        shared = _shared(self._events)
        events = [{k: v for k, v in event.items() if k not in shared} for event in self._events]
        output = _codec.dumps({"final": final, "shared": shared, "events": events}, agent_id=agent.agent_id,
                              step=call.name)
        return agent._record(call, LLM, self._input_text, output, "ok")

    def _replicated(self) -> bool:
        return (self._call.options.durability or self._agent._config.durability) == "replicated"

    def _done(self, state: str, final: dict[str, Any] | None = None) -> None:
        self._state, self._final = state, final
        self._agent._let_go(self.claim, self._token)

    def _final_answer(self) -> dict[str, Any]:
        if self._final is None:
            raise LLMError("the stream broke; there is no final answer", agent_id=self._agent.agent_id,
                           step=self._call.name, hint="a resumed run sends the request again")
        return self._final


class _Live(_Tape):
    """A sync agent's live stream."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._lock = threading.RLock()

    def next_json(self) -> dict[str, Any] | None:
        with self._lock:
            if self._state == "recorded":
                return None
            data = self._take_pending()
            if data is not None:
                return data
            try:
                return self._kept(next(self._response))
            except StopIteration:
                self._complete()
                return None
            except BaseException:
                self._break()
                raise

    def _complete(self) -> None:
        try:
            final = self._final_or_break()
            stored = self._commit(final)
            if self._replicated():
                self._agent._replicate(stored)
        except BaseException:
            self._break()
            raise
        self._done("recorded", final)

    def _break(self) -> None:
        self._response.close()
        self._done("broken")

    def finish(self) -> None:
        """Read the rest of the stream (the caller stopped early), so the step is complete and recorded."""
        with self._lock:
            while self._state == "open" and self.next_json() is not None:
                pass

    def final(self) -> dict[str, Any]:
        self.finish()
        return self._final_answer()

    def close(self) -> None:
        self.finish()


class _AsyncLive(_Tape):
    """An async agent's live stream."""

    _agent: AsyncStepRunner

    async def anext_json(self) -> dict[str, Any] | None:
        if self._state == "recorded":
            return None
        data = self._take_pending()
        if data is not None:
            return data
        try:
            return self._kept(await self._response.__anext__())
        except StopAsyncIteration:
            await self._complete()
            return None
        except BaseException:
            await self._break()
            raise

    async def _complete(self) -> None:
        try:
            final = self._final_or_break()
            stored = await self._agent._io(self._commit, final)
            if self._replicated():
                await asyncio.to_thread(self._agent._replicate, stored)  # a wait, never on the loop
        except BaseException:
            await self._break()
            raise
        self._done("recorded", final)

    async def _break(self) -> None:
        self._done("broken")
        await self._response.close()

    async def finish(self) -> None:
        while self._state == "open" and await self.anext_json() is not None:
            pass

    async def afinal(self) -> dict[str, Any]:
        await self.finish()
        return self._final_answer()

    async def aclose(self) -> None:
        await self.finish()


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
    """Validated when complete, else constructed leniently like the SDK does (as ``llm.rebuild``)."""
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


def _chunk(data: dict[str, Any]) -> ChatCompletionChunk:
    return _model(ChatCompletionChunk, data)


class DurableStream(Generic[_E]):
    """What ``create(..., stream=True)`` returns: iterate it for the chunks; use it as a context manager
    (or call :meth:`close`) to stop early, which reads and records the rest (see the module docs)."""

    def __init__(self, source: _Recorded | _Live, build: Callable[[dict[str, Any]], _E]) -> None:
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
            log.warning("could not read the rest of a stream after %r", exc, exc_info=True)


class AsyncDurableStream(Generic[_E]):
    """What ``await create(..., stream=True)`` returns on the async facade: ``async for`` the chunks; use
    ``async with`` (or ``await aclose()``) to stop early, which reads and records the rest."""

    def __init__(self, source: _Recorded | _AsyncLive, build: Callable[[dict[str, Any]], _E]) -> None:
        self._source = source
        self._build = build

    def __aiter__(self) -> AsyncIterator[_E]:
        return self

    async def __anext__(self) -> _E:
        data = await self._source.anext_json()
        if data is None:
            raise StopAsyncIteration
        return self._build(data)

    async def aclose(self) -> None:
        """Stop reading: the rest of a live stream is read and recorded (the answer is paid for anyway)."""
        await self._source.aclose()

    async def __aenter__(self) -> AsyncDurableStream[_E]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None:
            await self.aclose()
            return
        try:
            await self.aclose()
        except Exception:
            log.warning("could not read the rest of a stream after %r", exc, exc_info=True)


class ChatCompletionStream(DurableStream[ChatCompletionChunk]):
    """A durable Chat Completions stream of ``ChatCompletionChunk`` objects."""

    def __init__(self, source: _Recorded | _Live) -> None:
        super().__init__(source, _chunk)

    def get_final_completion(self) -> ChatCompletion:
        """The whole answer assembled from the chunks (the rest of the stream is read first)."""
        return _model(ChatCompletion, self._source.final())


class ResponseEventStream(DurableStream[ResponseStreamEvent]):
    """A durable Responses API stream of ``ResponseStreamEvent`` objects."""

    def __init__(self, source: _Recorded | _Live) -> None:
        super().__init__(source, _response_event)

    def get_final_response(self) -> Response:
        """The final response, from ``response.completed`` (the rest of the stream is read first)."""
        return _model(Response, self._source.final())


class AsyncChatCompletionStream(AsyncDurableStream[ChatCompletionChunk]):
    """A durable Chat Completions stream for async agents."""

    def __init__(self, source: _Recorded | _AsyncLive) -> None:
        super().__init__(source, _chunk)

    async def get_final_completion(self) -> ChatCompletion:
        """The whole answer assembled from the chunks (the rest of the stream is read first)."""
        return _model(ChatCompletion, await self._source.afinal())


class AsyncResponseEventStream(AsyncDurableStream[ResponseStreamEvent]):
    """A durable Responses API stream for async agents."""

    def __init__(self, source: _Recorded | _AsyncLive) -> None:
        super().__init__(source, _response_event)

    async def get_final_response(self) -> Response:
        """The final response, from ``response.completed`` (the rest of the stream is read first)."""
        return _model(Response, await self._source.afinal())


__all__ = ["AsyncChatCompletionStream", "AsyncDurableStream", "AsyncResponseEventStream", "ChatCompletionStream",
           "DurableStream", "ResponseEventStream", "async_chat_stream", "async_response_stream", "chat_stream",
           "response_stream"]
