"""What every durable LLM call shares, sync, async or streamed: the client, the retry policy (which
failures are worth another attempt, the server's own pacing), the budget check, the request text a step
hashes, and how a stored answer is rebuilt. The facades (``llm.py``, ``async_llm.py``) and streams
(``stream.py``) build on it; none of them imports another's facade."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

from .._base.config import LLMConfig
from .._base.errors import BudgetExceeded, LLMError, LLMRequestRejected, StepTimeout
from . import codec as _codec
from .journal import StepRecord
from .ledger import Usage, cost_of, usage_of
from .steps import StepBook, StepCall

if TYPE_CHECKING:
    import openai
    import pydantic
    import tenacity

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


