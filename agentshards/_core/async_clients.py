"""``openai.AsyncOpenAI`` clients, one per configuration per event loop: an async client's connection pool is
bound to the loop that made it. Shared by the async LLM facade and async streams; closed with the loop
``run_agent`` makes for an async agent."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING

from .._base.config import LLMConfig
from .._base.errors import LLMError

if TYPE_CHECKING:
    import openai


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[LLMConfig, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary())
_clients_lock = threading.Lock()


def async_client(config: LLMConfig, agent_id: str) -> openai.AsyncOpenAI:
    """One client per configuration per running event loop: it holds a connection pool bound to that loop."""
    loop = asyncio.get_running_loop()
    with _clients_lock:
        per_loop = _clients.setdefault(loop, {})
        client = per_loop.get(config)
        if client is None:
            if not config.api_key:
                raise LLMError("no OpenAI API key to make a new LLM call", agent_id=agent_id,
                               hint="set OPENAI_API_KEY (completed calls replay without one)")
            import openai

            client = openai.AsyncOpenAI(api_key=config.api_key, base_url=config.base_url,
                                        max_retries=0, timeout=config.timeout_s)
            per_loop[config] = client
        return client


async def close_clients() -> None:
    """Close the running loop's clients (their connections), before a loop this library made ends."""
    with _clients_lock:
        clients = _clients.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.close()
