"""The durable OpenAI facade: ``agent.llm.chat.completions.create(...)`` as a journaled step.

The response is stored as the JSON the ``openai`` model dumps, and every caller (first run or replay)
gets ``ChatCompletion.model_validate`` of the stored JSON, so both see the same object. ``openai`` and
``tenacity`` are imported on first use only: replaying a finished agent never imports them.

Retries belong to us, not to the client: the client is built with ``max_retries=0`` so one step
attempt cannot silently turn into several paid requests behind the journal's back.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._config import LLMConfig
from ._errors import LLMError

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion

    from ._agent import Agent, StepOptions

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
    """Worth another attempt: connection problems, timeouts, 5xx, and rate limits that are not quota."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.RateLimitError):
        return getattr(exc, "code", None) != "insufficient_quota"
    return isinstance(exc, openai.InternalServerError)


def _create_chat_completion(config: LLMConfig, agent_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    import tenacity

    client = _client(config, agent_id)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(config.max_attempts),
        wait=tenacity.wait_random_exponential(multiplier=config.backoff_s, max=config.backoff_max_s),
        retry=tenacity.retry_if_exception(_is_transient),
        reraise=True,
    )
    completion = retrying(client.chat.completions.create, **kwargs)
    dumped: dict[str, Any] = completion.model_dump(mode="json", exclude_unset=True)
    return dumped


class _Completions:
    def __init__(self, llm: DurableLLM) -> None:
        self._llm = llm

    def create(self, **kwargs: Any) -> ChatCompletion:
        """Like ``openai``'s ``chat.completions.create`` (non-streaming), made once per run."""
        llm = self._llm
        if kwargs.get("stream"):
            raise LLMError("stream=True is not durable yet", agent_id=llm._agent.agent_id,
                           hint="call without stream; the full response is journaled and replayed")
        from openai.types.chat import ChatCompletion

        text = llm._agent._execute(
            llm._options.name, "llm",
            lambda: _create_chat_completion(llm._config, llm._agent.agent_id, kwargs),
        )
        return ChatCompletion.model_validate_json(text)


class _Chat:
    def __init__(self, llm: DurableLLM) -> None:
        self.completions = _Completions(llm)


class DurableLLM:
    """``agent.llm``: the OpenAI surface that is durable today; anything else raises LLMError."""

    def __init__(self, agent: Agent, config: LLMConfig, options: StepOptions) -> None:
        self._agent = agent
        self._config = config
        self._options = options
        self.chat = _Chat(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise LLMError(f"agent.llm.{name} is not durable yet", agent_id=self._agent.agent_id,
                       hint="use agent.llm.chat.completions.create, or wrap another call in agent.step")
