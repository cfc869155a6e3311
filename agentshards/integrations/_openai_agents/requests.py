"""What the SDK sends, made the same on every run of the same agent: the request that is hashed and sent.

A durable LLM step checks on replay that it is asked the same question as when it ran (else
NonDeterminismError). The SDK adds things to every request that differ between two runs of identical
code, so a resumed run would never match its own journal:

- ``omit`` / ``NOT_GIVEN`` sentinels for every unset parameter (not JSON; dropped, as the client drops them);
- a ``User-Agent: Agents/Python <version>`` header (an SDK upgrade between crash and resume is not a new
  question; the header is dropped, the caller's own headers are kept);
- ``prompt_cache_key="agents-sdk:run:<random>"``, new for every ``Runner.run`` when the endpoint is
  OpenAI's: replaced by a key derived from the agent and its run, stable across resumes (and so still
  one cache group per run, which is what the SDK's key is for);
- ``include``, built from a set: its order follows Python's per-process string hashing; sorted here;
- pydantic objects (``reasoning=Reasoning(...)``, input items): their JSON dump, as the client sends it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

SDK_RUN_CACHE_KEY_PREFIX = "agents-sdk:run:"
SDK_USER_AGENT_PREFIX = "Agents/Python"
_CACHE_KEY_NAMESPACE = uuid.UUID("8d7f3a52-6c1e-4b0a-9f3d-2e5c7a9b1d04")
_DROPPED_WHEN_NONE = ("extra_headers", "extra_query", "extra_body")


def stable_cache_key(agent_id: str, run_id: str) -> str:
    """The prompt cache key an agentshards run uses where the SDK would draw a random one per call of
    ``Runner.run``: one per agent run, the same after every resume."""
    return f"agentshards:run:{uuid.uuid5(_CACHE_KEY_NAMESPACE, f'{agent_id}/{run_id}').hex}"


def _is_sentinel(value: Any) -> bool:
    import openai

    return isinstance(value, openai.Omit | openai.NotGiven)


def _plain(value: Any) -> Any:
    """JSON-able data for ``value``: pydantic models dumped as the client sends them, tuples as lists."""
    import pydantic

    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not _is_sentinel(v)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _headers(value: Any) -> dict[str, Any] | None:
    headers = {k: v for k, v in dict(value).items() if not _is_sentinel(v)}
    agent = headers.get("User-Agent")
    if isinstance(agent, str) and agent.startswith(SDK_USER_AGENT_PREFIX):
        del headers["User-Agent"]
    return headers or None


def normalise(request: Mapping[str, Any], *, cache_key: str) -> dict[str, Any]:
    """The request as it is hashed and sent: the same for the same agent code, inputs and journal."""
    out: dict[str, Any] = {}
    for key, value in request.items():
        if _is_sentinel(value) or (value is None and key in _DROPPED_WHEN_NONE):
            continue
        if key == "extra_headers":
            value = _headers(value)
            if value is None:
                continue
        elif key == "prompt_cache_key" and isinstance(value, str) and value.startswith(SDK_RUN_CACHE_KEY_PREFIX):
            value = cache_key
        elif key == "include" and isinstance(value, list | tuple | set | frozenset):
            value = sorted(str(v) for v in value)
        out[key] = _plain(value)
    return out
