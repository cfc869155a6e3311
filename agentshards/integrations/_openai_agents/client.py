"""The OpenAI client the SDK's models are given: ``responses.create`` and ``chat.completions.create`` go
through agentshards' durable LLM facade, one journaled step per call.

The SDK builds each request itself (model, input, tools, settings) and awaits ``create(**kwargs)``; this
client normalises the request (see :mod:`.requests`), names the step (see :mod:`.scope`) and returns the
facade's answer, which on a resumed run is the recorded one. It has no retries of its own and ignores the
SDK's ``with_options(max_retries=0)``: the facade's retries are the only layer, under the journal. It
offers nothing else of the OpenAI client: the SDK falls back from what is missing (it checks for
``responses.with_streaming_response`` with ``getattr(..., None)``), so every other attribute is an
AttributeError that says why.
"""

from __future__ import annotations

from typing import Any

from . import scope as _scope
from .errors import NotDurable
from .requests import normalise, stable_cache_key

OFFICIAL_BASE_URL = "https://api.openai.com/v1"


class _Missing:
    _path: str

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self._path}.{name} is not offered to the SDK under agentshards: only "
                             f"responses.create and chat.completions.create are durable")


class _Create(_Missing):
    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._path = endpoint

    async def create(self, **kwargs: Any) -> Any:
        scope = _scope.require()
        handle = scope.handle
        if kwargs.get("stream") is True and not handle.is_async:
            raise NotDurable("a streamed model call needs the async handle", feature="streaming",
                             agent_id=handle.agent_id,
                             hint="make the agent function async def and use run_streamed there, or use run_sync")
        request = normalise(kwargs, cache_key=stable_cache_key(handle.agent_id, handle.run_id))
        return await handle.llm(self._endpoint, scope.model_step(), request)


class _Chat(_Missing):
    _path = "chat"

    def __init__(self) -> None:
        self.completions = _Create("chat.completions")


class DurableClient(_Missing):
    """Stands in for ``AsyncOpenAI`` inside the SDK's ``OpenAIResponsesModel``/``OpenAIChatCompletionsModel``.

    ``base_url`` is the endpoint the facade really calls, so the SDK makes the same choices as with a
    client of its own (a prompt cache key and ``store`` only for OpenAI's own endpoint).
    """

    _path = "client"
    websocket_base_url = None

    def __init__(self, base_url: str | None) -> None:
        self.base_url = base_url or OFFICIAL_BASE_URL
        self.responses = _Create("responses")
        self.chat = _Chat()

    def with_options(self, **_options: Any) -> DurableClient:
        """The SDK asks for ``max_retries=0`` before calls it retries itself: already so, and it retries
        nothing here (its retries are switched off for durable runs)."""
        return self
