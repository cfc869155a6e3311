"""The durable facade over ``openai.AsyncOpenAI``: ``await agent.llm.chat.completions.create(...)``.

The same rules as the sync facade (:mod:`.llm`), whose pieces it calls: one committed attempt row before
each send, the answer's cost in the ledger before the step is recorded, the same transient-error rules
and Retry-After handling (``RetryPolicy``, driven here by tenacity's ``AsyncRetrying``), the same stored
JSON and rebuilt objects. What differs is only how it waits: the request is awaited, journal writes go
through the agent's offload (see :mod:`.offload`), and the step's timeout cancels the request.

``AsyncOpenAI`` clients are bound to the event loop they first ran on, so the cache is per loop (and
per configuration); a loop's clients go away with the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, overload

from .._base.errors import LLMError
from . import codec as _codec
from . import fence as _fence
from .async_clients import async_client
from .async_steps import AsyncStepRunner
from .llm_call import RetryPolicy, _check_budget, _NotDurable, answer_of, rebuild, request_text, stored_answer
from .steps import LLM, Performed, StepCall, StepOptions

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    from .stream import AsyncChatCompletionStream, AsyncResponseEventStream


async def _perform(agent: AsyncStepRunner, call: StepCall, endpoint: str, request: dict[str, Any]) -> Performed:
    """The async twin of ``llm._perform``: same rows in the same order, same retry rules.

    The answer's ledger row is committed in the same trip to the offload thread as the step's record (two
    transactions, ledger first, as on the sync path): one thread hop fewer per call."""
    import openai
    import tenacity

    config = agent._config.llm
    if agent._config.budget_usd is not None:
        await agent._io(_check_budget, agent, call.name)
    client = async_client(config, agent.agent_id)
    create = client.chat.completions.create if endpoint == "chat.completions" else client.responses.create
    policy = RetryPolicy(agent, call)
    journal, run_id, name = agent._journal, agent.run_id, call.name

    async def send() -> tuple[dict[str, Any], Callable[[], None]]:
        number = await agent._io(journal.begin_attempt, run_id, name, call.input_hash)
        agent._crash.reached("after_intent")
        started = time.monotonic()
        try:
            _fence.check_send(agent.agent_id)  # a fenced or stopping fleet worker sends nothing more
            response = await create(**{"timeout": policy.request_timeout(), **request})
        except openai.APIStatusError:
            await agent._io(journal.end_attempt, run_id, name, number, "error")  # answered: not in flight
            raise
        dumped, usage, cost = answer_of(response, config)
        latency = time.monotonic() - started

        def ledger() -> None:
            journal.record_answer(run_id, name, number, agent.execution, usage, latency, cost)
            agent._crash.reached("after_response")

        return dumped, ledger

    try:
        async with asyncio.timeout(policy.budget):  # the step's budget cancels the request in flight
            retrying = tenacity.AsyncRetrying(**policy.tenacity_kwargs())
            answer: tuple[dict[str, Any], Callable[[], None]] = await retrying(send)
    except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
        return Performed(*policy.rejected(exc))
    except (openai.APITimeoutError, TimeoutError) as exc:
        timeout = policy.timed_out(exc)
        if timeout is not None:
            raise timeout from exc
        raise
    dumped, ledger = answer
    return Performed(_codec.dumps(dumped, agent_id=agent.agent_id, step=name), "ok", ledger)


async def _durable_call(llm: AsyncDurableLLM, endpoint: str, kwargs: dict[str, Any]) -> str:
    agent = llm._agent
    input_text = request_text(agent, endpoint, kwargs)
    record = await agent._execute(llm._options.name, LLM, input_text, llm._options,
                                  lambda call: _perform(agent, call, endpoint, kwargs))
    return stored_answer(agent, record)


class _Completions(_NotDurable):
    _path = "chat.completions"

    def __init__(self, llm: AsyncDurableLLM) -> None:
        self._llm = llm

    @overload
    async def create(self, *, stream: Literal[True], **kwargs: Any) -> AsyncChatCompletionStream: ...

    @overload
    async def create(self, *, stream: Literal[False] = ..., **kwargs: Any) -> ChatCompletion: ...

    async def create(self, **kwargs: Any) -> ChatCompletion | AsyncChatCompletionStream:
        """Like ``AsyncOpenAI``'s ``chat.completions.create``, made once per run: a ChatCompletion, or with
        ``stream=True`` an async stream of chunks (see :mod:`.stream`)."""
        from openai.types.chat import ChatCompletion

        if kwargs.get("stream"):
            from .stream import async_chat_stream

            agent = self._llm._agent
            return await async_chat_stream(agent, self._llm._options, kwargs,
                                           lambda: async_client(agent._config.llm, agent.agent_id))
        return rebuild(ChatCompletion, await _durable_call(self._llm, "chat.completions", kwargs))


class _Chat(_NotDurable):
    _path = "chat"

    def __init__(self, llm: AsyncDurableLLM) -> None:
        self._llm = llm
        self.completions = _Completions(llm)


class _Responses(_NotDurable):
    _path = "responses"

    def __init__(self, llm: AsyncDurableLLM) -> None:
        self._llm = llm

    @overload
    async def create(self, *, stream: Literal[True], **kwargs: Any) -> AsyncResponseEventStream: ...

    @overload
    async def create(self, *, stream: Literal[False] = ..., **kwargs: Any) -> Response: ...

    async def create(self, **kwargs: Any) -> Response | AsyncResponseEventStream:
        """Like ``AsyncOpenAI``'s ``responses.create``, made once per run; tool calls included. With
        ``stream=True``, an async stream of events (see :mod:`.stream`)."""
        from openai.types.responses import Response

        if kwargs.get("stream"):
            from .stream import async_response_stream

            agent = self._llm._agent
            return await async_response_stream(agent, self._llm._options, kwargs,
                                               lambda: async_client(agent._config.llm, agent.agent_id))
        return rebuild(Response, await _durable_call(self._llm, "responses", kwargs))


class AsyncDurableLLM:
    """``agent.llm`` of an :class:`~agentshards.AsyncAgent`: the durable part of ``AsyncOpenAI``.

    Durable: ``await chat.completions.create(...)`` and ``await responses.create(...)``, streamed
    (``stream=True``: an async iterator) or not; anything else raises LLMError, as on the sync facade.
    """

    def __init__(self, agent: AsyncStepRunner, options: StepOptions) -> None:
        self._agent = agent
        self._options = options
        self.chat = _Chat(self)
        self.responses = _Responses(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise LLMError(f"agent.llm.{name} is not durable yet", agent_id=self._agent.agent_id,
                       hint="use agent.llm.chat.completions.create or agent.llm.responses.create, "
                            "or wrap another call in agent.step")
