"""The durable OpenAI facade: ``agent.llm.chat.completions.create(...)`` as a journaled step.

The response is stored as the JSON the ``openai`` model dumps, and every caller (first run or replay)
gets the object rebuilt from the stored JSON the way the SDK builds it from the wire (``construct``:
lenient, so a field the provider omits does not break a replay), so both see the same object. ``openai`` and
``tenacity`` are imported on first use only: replaying a finished agent never imports them.

Retries belong to us, not to the client: the client is built with ``max_retries=0`` so one step
attempt cannot silently turn into several paid requests behind the journal's back.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal, overload

from .._base.errors import LLMError
from . import codec as _codec
from . import fence as _fence
from .llm_call import (
    RetryPolicy,
    _check_budget,
    _client,
    _NotDurable,
    answer_of,
    rebuild,
    request_text,
    stored_answer,
)
from .steps import LLM, StepCall, StepOptions, StepRunner

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    from .stream import ChatCompletionStream, ResponseEventStream

log = logging.getLogger("agentshards")
def _perform(agent: StepRunner, call: StepCall, endpoint: str, request: dict[str, Any]) -> tuple[str, str]:
    """Send the request (retrying transient failures), one committed attempt row before each send.

    The budget is checked first, against what the agent's ledger says it has spent. Each answer's cost
    goes to the ledger as soon as it arrives, before the step is recorded.
    """
    import openai
    import tenacity

    config = agent._config.llm
    _check_budget(agent, call.name)
    client = _client(config, agent.agent_id)
    create = client.chat.completions.create if endpoint == "chat.completions" else client.responses.create
    policy = RetryPolicy(agent, call)

    def send() -> Any:
        number = agent._journal.begin_attempt(agent.run_id, call.name, call.input_hash)
        agent._crash.reached("after_intent")
        started = time.monotonic()
        try:
            _fence.check_send(agent.agent_id)  # a fenced or stopping fleet worker sends nothing more
            response = create(**{"timeout": policy.request_timeout(), **request})
        except openai.APIStatusError:
            agent._journal.end_attempt(agent.run_id, call.name, number, "error")  # answered: not in flight
            raise
        dumped, usage, cost = answer_of(response, config)
        agent._journal.record_answer(agent.run_id, call.name, number, agent.execution, usage,
                                     time.monotonic() - started, cost)
        agent._crash.reached("after_response")
        return dumped

    try:
        dumped = tenacity.Retrying(**policy.tenacity_kwargs())(send)
    except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
        return policy.rejected(exc)
    except openai.APITimeoutError as exc:
        timeout = policy.timed_out(exc)
        if timeout is not None:
            raise timeout from exc
        raise
    return _codec.dumps(dumped, agent_id=agent.agent_id, step=call.name), "ok"


def _durable_call(llm: DurableLLM, endpoint: str, kwargs: dict[str, Any]) -> str:
    """Journal one call to ``endpoint``; return the stored JSON (raising a recorded rejection)."""
    agent = llm._agent
    input_text = request_text(agent, endpoint, kwargs)
    record = agent._execute(llm._options.name, LLM, input_text, llm._options,
                            lambda call: _perform(agent, call, endpoint, kwargs))
    return stored_answer(agent, record)


class _Completions(_NotDurable):
    _path = "chat.completions"

    def __init__(self, llm: DurableLLM) -> None:
        self._llm = llm

    @overload
    def create(self, *, stream: Literal[True], **kwargs: Any) -> ChatCompletionStream: ...

    @overload
    def create(self, *, stream: Literal[False] = ..., **kwargs: Any) -> ChatCompletion: ...

    def create(self, **kwargs: Any) -> ChatCompletion | ChatCompletionStream:
        """Like ``openai``'s ``chat.completions.create``, made once per run: a ChatCompletion, or with
        ``stream=True`` a stream of chunks (see :mod:`.stream`)."""
        from openai.types.chat import ChatCompletion

        if kwargs.get("stream"):
            from .stream import chat_stream

            return chat_stream(self._llm._agent, self._llm._options, kwargs)
        return rebuild(ChatCompletion, _durable_call(self._llm, "chat.completions", kwargs))


class _Chat(_NotDurable):
    _path = "chat"

    def __init__(self, llm: DurableLLM) -> None:
        self._llm = llm
        self.completions = _Completions(llm)


class _Responses(_NotDurable):
    _path = "responses"

    def __init__(self, llm: DurableLLM) -> None:
        self._llm = llm

    @overload
    def create(self, *, stream: Literal[True], **kwargs: Any) -> ResponseEventStream: ...

    @overload
    def create(self, *, stream: Literal[False] = ..., **kwargs: Any) -> Response: ...

    def create(self, **kwargs: Any) -> Response | ResponseEventStream:
        """Like ``openai``'s ``responses.create``, made once per run; tool calls included. With
        ``stream=True``, a stream of events (see :mod:`.stream`)."""
        from openai.types.responses import Response

        if kwargs.get("stream"):
            from .stream import response_stream

            return response_stream(self._llm._agent, self._llm._options, kwargs)
        return rebuild(Response, _durable_call(self._llm, "responses", kwargs))


class DurableLLM:
    """``agent.llm``: the OpenAI surface that is durable today; anything else raises LLMError.

    Durable: ``chat.completions.create`` and ``responses.create``, streamed (``stream=True``) or not. Not
    durable yet, and refused: ``.parse()``/``.stream()``, ``beta``, ``embeddings``, ``images`` and every
    other endpoint (wrap them in ``agent.step`` if their results are JSON). The async facade is
    ``agentshards._core.async_llm``.
    """

    def __init__(self, agent: StepRunner, options: StepOptions) -> None:
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
