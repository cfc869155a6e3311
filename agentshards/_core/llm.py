"""The durable OpenAI facade: ``agent.llm.chat.completions.create(...)`` as a journaled step.

The response is stored as the JSON the ``openai`` model dumps, and every caller (first run or replay)
gets the object rebuilt from the stored JSON the way the SDK builds it from the wire (``construct``:
lenient, so a field the provider omits does not break a replay), so both see the same object. ``openai`` and
``tenacity`` are imported on first use only: replaying a finished agent never imports them.

Retries belong to us, not to the client: the client is built with ``max_retries=0`` so one step
attempt cannot silently turn into several paid requests behind the journal's back.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .._base.config import LLMConfig
from .._base.errors import BudgetExceeded, LLMError, LLMRequestRejected, StepTimeout
from . import codec as _codec
from .journal import StepRecord
from .ledger import cost_of, usage_of
from .steps import LLM, StepCall, StepOptions, StepRunner

if TYPE_CHECKING:
    import openai
    import pydantic
    import tenacity
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    from .stream import ChatCompletionStream, ResponseEventStream

log = logging.getLogger("agentshards")
_M = TypeVar("_M", bound="pydantic.BaseModel")
_T = TypeVar("_T")

_clients: dict[LLMConfig, openai.OpenAI] = {}
_clients_lock = threading.Lock()


def _client(config: LLMConfig, agent_id: str) -> openai.OpenAI:
    """One client per configuration per process: it holds a connection pool worth reusing."""
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            if not config.api_key:
                raise LLMError("no OpenAI API key to make a new LLM call", agent_id=agent_id,
                               hint="set OPENAI_API_KEY (completed calls replay without one)")
            import openai

            client = openai.OpenAI(api_key=config.api_key, base_url=config.base_url,
                                   max_retries=0, timeout=config.timeout_s)
            _clients[config] = client
        return client


def _is_transient(exc: BaseException) -> bool:
    """Worth another attempt: connection problems, timeouts, 5xx, and 429s that are not out-of-quota.

    Not transient: 429 ``insufficient_quota`` (waiting does not add credit), 400/422 (the request is
    wrong), 401/403 (the key is wrong), 404 (the model does not exist).
    """
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.RateLimitError):
        return getattr(exc, "code", None) != "insufficient_quota"
    return isinstance(exc, openai.InternalServerError)


def _retry_after_s(exc: BaseException | None) -> float | None:
    """The server's own pacing, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _perform(agent: StepRunner, call: StepCall, endpoint: str, request: dict[str, Any]) -> tuple[str, str]:
    """Send the request and return the answer as stored JSON with its outcome (``error``: rejected)."""

    def take(response: Any, number: int, started: float) -> dict[str, Any]:
        dumped: dict[str, Any] = response.model_dump(mode="json", exclude_unset=True)
        record_cost(agent, call, number, dumped, started)
        return dumped

    answer = send_request(agent, call, endpoint, request, take)
    if isinstance(answer, Rejected):
        return answer.json, "error"
    return _codec.dumps(answer, agent_id=agent.agent_id, step=call.name), "ok"


def record_cost(agent: StepRunner, call: StepCall, number: int, answer: dict[str, Any], started: float) -> None:
    """The answer's cost goes to the ledger (its attempt answered) as soon as it is complete, before the
    step is recorded, so a crash in between still shows the money as spent."""
    usage = usage_of(answer)
    agent._journal.record_answer(agent.run_id, call.name, number, agent.execution, usage,
                                 time.monotonic() - started, cost_of(usage, agent._config.llm.prices))
    agent._crash.reached("after_response")


@dataclass(frozen=True)
class Rejected:
    """The provider refused the request as invalid (400/422): stored as the step's ``error`` outcome."""

    json: str


def send_request(agent: StepRunner, call: StepCall, endpoint: str, request: dict[str, Any],
          take: Callable[[Any, int, float], _T]) -> _T | Rejected:
    """Send the request (retrying transient failures), one committed attempt row before each send.

    ``take(response, attempt_number, started)`` turns the client's answer into the result; a transient
    error it raises is retried like one of the request's own. The budget is checked first, against what
    the agent's ledger says it has spent.
    """
    import openai
    import tenacity

    config = agent._config.llm
    _check_budget(agent, call.name)
    client = _client(config, agent.agent_id)
    create = client.chat.completions.create if endpoint == "chat.completions" else client.responses.create
    attempts = call.options.max_attempts or config.max_attempts
    budget = call.options.timeout_s
    deadline = None if budget is None else time.monotonic() + budget

    def remaining() -> float:
        return float("inf") if deadline is None else deadline - time.monotonic()

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        pause = _retry_after_s(state.outcome.exception())
        if pause is None:  # exponential backoff with full jitter
            pause = random.uniform(0, config.backoff_s * 2 ** (state.attempt_number - 1))
        return max(0.0, min(pause, config.backoff_max_s, remaining()))

    def stop(state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= attempts or remaining() <= 0

    def send() -> _T:
        number = agent._journal.begin_attempt(agent.run_id, call.name, call.input_hash)
        agent._crash.reached("after_intent")
        timeout = min(config.timeout_s, max(remaining(), 0.001))
        started = time.monotonic()
        try:
            response = create(**{"timeout": timeout, **request})
        except openai.APIStatusError:
            agent._journal.end_attempt(agent.run_id, call.name, number, "error")  # answered: not in flight
            raise
        return take(response, number, started)

    retrying = tenacity.Retrying(stop=stop, wait=wait, retry=tenacity.retry_if_exception(_is_transient),
                                 reraise=True, before_sleep=lambda s: log.warning(
                                     "agent %s: LLM step %r attempt %d failed (%s); retrying", agent.agent_id,
                                     call.name, s.attempt_number, s.outcome.exception() if s.outcome else "?"))
    try:
        return retrying(send)
    except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
        rejected = {"status": exc.status_code, "code": exc.code, "message": str(exc.message)[:2000]}
        return Rejected(_codec.dumps(rejected, agent_id=agent.agent_id, step=call.name))
    except openai.APITimeoutError as exc:
        if remaining() <= 0:
            raise StepTimeout(f"no LLM answer within {budget}s ({attempts} attempts allowed)",
                              agent_id=agent.agent_id, step=call.name,
                              hint="raise timeout_s in agent.options(...); nothing was recorded") from exc
        raise


def _check_budget(agent: StepRunner, step: str) -> None:
    limit = agent._config.budget_usd
    if limit is None:
        return
    spent = agent._journal.spend().spent_usd
    if spent >= limit:
        raise BudgetExceeded(f"recorded spend ${spent:.6f} reached the budget ${limit:.6f}", agent_id=agent.agent_id,
                             step=step, hint="the run ended as budget_exceeded; raise RunConfig(budget_usd=...) "
                                             "and start a new run to go on")


def request_text(agent: StepRunner, endpoint: str, kwargs: dict[str, Any]) -> str:
    """The call as the journal identifies it (its hash tells a replay with another request)."""
    try:
        return _codec.canonical({"endpoint": endpoint, "request": kwargs})
    except (TypeError, ValueError) as exc:
        raise LLMError(f"the request is not JSON-able: {exc}", agent_id=agent.agent_id,
                       hint="pass plain dicts/lists/str (e.g. model.model_dump()) in the request") from exc


def _durable_call(llm: DurableLLM, endpoint: str, kwargs: dict[str, Any]) -> str:
    """Journal one call to ``endpoint``; return the stored JSON (raising a recorded rejection)."""
    agent = llm._agent
    record = agent._execute(llm._options.name, LLM, request_text(agent, endpoint, kwargs), llm._options,
                            lambda call: _perform(agent, call, endpoint, kwargs))
    return answer_of(agent, record)


def answer_of(agent: StepRunner, record: StepRecord) -> str:
    """The recorded answer's JSON, or the recorded rejection raised as LLMRequestRejected."""
    if record.outcome == "error":
        rejected = _codec.loads(record.output_json)
        raise LLMRequestRejected(f"the provider rejected the request ({rejected['status']}): "
                                 f"{rejected['message'][:300]}", status=int(rejected["status"]),
                                 code=rejected.get("code"), agent_id=agent.agent_id, step=record.name)
    return record.output_json


def _rebuild(model: type[_M], text: str) -> _M:
    """The stored JSON as an openai object: validated in Rust when it is complete (fast, ~20x quicker than
    constructing), else constructed leniently like the SDK does, so a field the provider omitted never
    breaks a replay. First run and replay take the same path for the same text."""
    import pydantic

    try:
        return model.model_validate_json(text)
    except pydantic.ValidationError:
        return model.construct(**_codec.loads(text))


class _NotDurable:
    """Every attribute but the durable ones raises a clear LLMError instead of bypassing the journal."""

    _path: str
    _llm: DurableLLM

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise LLMError(f"agent.llm.{self._path}.{name} is not durable yet", agent_id=self._llm._agent.agent_id,
                       hint="use .create(...) (stream=True included), or wrap another call in agent.step")


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
        return _rebuild(ChatCompletion, _durable_call(self._llm, "chat.completions", kwargs))


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
        return _rebuild(Response, _durable_call(self._llm, "responses", kwargs))


class DurableLLM:
    """``agent.llm``: the OpenAI surface that is durable today; anything else raises LLMError.

    Durable: ``chat.completions.create`` and ``responses.create``, streamed (``stream=True``) or not. Not
    durable yet, and refused: ``.parse()``/``.stream()``, ``beta``, ``embeddings``, ``images`` and every
    other endpoint (wrap them in ``agent.step`` if their results are JSON). There is no async facade.
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
