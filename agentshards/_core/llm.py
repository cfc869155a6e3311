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
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .._base.config import LLMConfig
from .._base.errors import BudgetExceeded, LLMError, LLMRequestRejected, StepTimeout
from . import codec as _codec
from . import fence as _fence
from .journal import StepRecord
from .ledger import Usage, cost_of, usage_of
from .steps import LLM, StepBook, StepCall, StepOptions, StepRunner

if TYPE_CHECKING:
    import openai
    import pydantic
    import tenacity
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    from .stream import ChatCompletionStream, ResponseEventStream

log = logging.getLogger("agentshards")
_M = TypeVar("_M", bound="pydantic.BaseModel")

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


class RetryPolicy:
    """One LLM step's retry rules, the same for the sync and the async facade: how many attempts, the
    step's wall-clock budget, which errors are transient, and Retry-After-aware backoff with full jitter."""

    def __init__(self, agent: StepBook, call: StepCall) -> None:
        self._agent, self._call, self._config = agent, call, agent._config.llm
        self.attempts = call.options.max_attempts or self._config.max_attempts
        self.budget = call.options.timeout_s
        self._deadline = None if self.budget is None else time.monotonic() + self.budget

    def remaining(self) -> float:
        return float("inf") if self._deadline is None else self._deadline - time.monotonic()

    def request_timeout(self) -> float:
        """One request's timeout: the client's, cut to what is left of the step's budget."""
        return min(self._config.timeout_s, max(self.remaining(), 0.001))

    def wait(self, state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        pause = _retry_after_s(state.outcome.exception())
        if pause is None:  # exponential backoff with full jitter
            pause = random.uniform(0, self._config.backoff_s * 2 ** (state.attempt_number - 1))
        return max(0.0, min(pause, self._config.backoff_max_s, self.remaining()))

    def stop(self, state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= self.attempts or self.remaining() <= 0

    def tenacity_kwargs(self) -> dict[str, Any]:
        """For ``tenacity.Retrying`` or ``tenacity.AsyncRetrying``: only transient errors are retried."""
        import tenacity

        agent, name = self._agent, self._call.name
        return {"stop": self.stop, "wait": self.wait, "retry": tenacity.retry_if_exception(_is_transient),
                "reraise": True, "before_sleep": lambda s: log.warning(
                    "agent %s: LLM step %r attempt %d failed (%s); retrying", agent.agent_id, name,
                    s.attempt_number, s.outcome.exception() if s.outcome else "?")}

    def rejected(self, exc: openai.BadRequestError | openai.UnprocessableEntityError) -> tuple[str, str]:
        """A request the provider refused as invalid is the step's recorded outcome, not an error to retry."""
        rejected = {"status": exc.status_code, "code": exc.code, "message": str(exc.message)[:2000]}
        return _codec.dumps(rejected, agent_id=self._agent.agent_id, step=self._call.name), "error"

    def timed_out(self, exc: BaseException) -> StepTimeout | None:
        """The StepTimeout to raise when ``exc`` came from running out of the step's budget, else None."""
        if self.remaining() > 0:
            return None
        return StepTimeout(f"no LLM answer within {self.budget}s ({self.attempts} attempts allowed)",
                           agent_id=self._agent.agent_id, step=self._call.name,
                           hint="raise timeout_s in agent.options(...); nothing was recorded")


def answer_of(response: pydantic.BaseModel, config: LLMConfig) -> tuple[dict[str, Any], Usage, float | None]:
    """An answered call as stored (the JSON the SDK model dumps), its usage and its price."""
    dumped = response.model_dump(mode="json", exclude_unset=True)
    usage = usage_of(dumped)
    return dumped, usage, cost_of(usage, config.prices)


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


def _check_budget(agent: StepBook, step: str) -> None:
    limit = agent._config.budget_usd
    if limit is None:
        return
    spent = agent._journal.spend().spent_usd
    if spent >= limit:
        raise BudgetExceeded(f"recorded spend ${spent:.6f} reached the budget ${limit:.6f}", agent_id=agent.agent_id,
                             step=step, hint="the run ended as budget_exceeded; raise RunConfig(budget_usd=...) "
                                             "and start a new run to go on")


def request_text(agent: StepBook, endpoint: str, kwargs: dict[str, Any]) -> str:
    """The request as hashed and previewed in the journal; refuses what cannot be made durable."""
    try:
        return _codec.canonical({"endpoint": endpoint, "request": kwargs})
    except (TypeError, ValueError) as exc:
        raise LLMError(f"the request is not JSON-able: {exc}", agent_id=agent.agent_id,
                       hint="pass plain dicts/lists/str (e.g. model.model_dump()) in the request") from exc


def stored_answer(agent: StepBook, record: StepRecord) -> str:
    """The recorded answer's JSON; a recorded rejection is raised again, the same on every replay."""
    if record.outcome == "error":
        rejected = _codec.loads(record.output_json)
        raise LLMRequestRejected(f"the provider rejected the request ({rejected['status']}): "
                                 f"{rejected['message'][:300]}", status=int(rejected["status"]),
                                 code=rejected.get("code"), agent_id=agent.agent_id, step=record.name)
    return record.output_json


def _durable_call(llm: DurableLLM, endpoint: str, kwargs: dict[str, Any]) -> str:
    """Journal one call to ``endpoint``; return the stored JSON (raising a recorded rejection)."""
    agent = llm._agent
    input_text = request_text(agent, endpoint, kwargs)
    record = agent._execute(llm._options.name, LLM, input_text, llm._options,
                            lambda call: _perform(agent, call, endpoint, kwargs))
    return stored_answer(agent, record)


def rebuild(model: type[_M], text: str) -> _M:
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
    _llm: Any  # the sync or the async facade: what is read here is ._agent

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
