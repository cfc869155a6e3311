"""The model provider of a durable SDK run: the SDK's own OpenAI models, given the durable client.

Every model the run resolves by name (the agent's ``model``, ``RunConfig.model`` as a string, the SDK's
default model) comes from here, so handoffs and agents used as tools get durable models too. Before each
call the turn's tools are checked and its function tools made durable (see :mod:`.tools`): the SDK runs
the model's tool calls from the very list it gave the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from agents.models.default_models import get_default_model
from agents.models.interface import Model, ModelProvider
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.models.openai_responses import OpenAIResponsesModel

from .client import DurableClient
from .errors import NotDurable
from .tools import make_durable

Api = Literal["responses", "chat_completions"]
_TOOLS_AT = 3  # the position of ``tools`` in Model.get_response / stream_response


def _turn_tools(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    tools = kwargs["tools"] if "tools" in kwargs else args[_TOOLS_AT] if len(args) > _TOOLS_AT else None
    if isinstance(tools, list):
        make_durable(tools)


class DurableResponsesModel(OpenAIResponsesModel):
    """The SDK's Responses model over the durable client."""

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        _turn_tools(args, kwargs)
        return await super().get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        _turn_tools(args, kwargs)
        return super().stream_response(*args, **kwargs)


class DurableChatModel(OpenAIChatCompletionsModel):
    """The SDK's Chat Completions model over the durable client."""

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        _turn_tools(args, kwargs)
        return await super().get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        _turn_tools(args, kwargs)
        return super().stream_response(*args, **kwargs)


DURABLE_MODELS = (DurableResponsesModel, DurableChatModel)


OTHER_PROVIDERS = ("litellm", "any-llm")


def _model_name(name: str) -> str:
    """The name the facade sends: ``openai/`` dropped as the SDK drops it; another provider's prefix refused
    (its calls would not reach the facade). Other slashes are part of the name (``meta-llama/...``)."""
    prefix, slash, rest = name.partition("/")
    if slash and prefix in OTHER_PROVIDERS:
        raise NotDurable(f"model {name!r} goes through another provider", feature="model_provider",
                         hint="name an OpenAI-compatible model; point LLMConfig(base_url=...) at the provider")
    return rest if slash and prefix == "openai" else name


def check_model_name(name: str, agent_id: str) -> None:
    """Refuse a model name the durable provider would refuse, before the run starts."""
    try:
        _model_name(name)
    except NotDurable as exc:
        raise NotDurable(exc.message, feature=exc.feature, agent_id=agent_id, hint=exc.hint) from None


class DurableProvider(ModelProvider):
    """Resolves model names to durable models: ``gpt-4o-mini`` or ``openai/gpt-4o-mini``; another
    provider's prefix (``litellm/...``) is refused, its calls would not reach the facade."""

    def __init__(self, client: DurableClient, api: Api) -> None:
        self._client = client
        self._api = api

    def get_model(self, model_name: str | None) -> Model:
        name = _model_name(model_name if model_name is not None else get_default_model())
        client: Any = self._client
        if self._api == "chat_completions":
            return DurableChatModel(model=name, openai_client=client)
        return DurableResponsesModel(model=name, openai_client=client, model_is_explicit=model_name is not None)
