"""The cost ledger: what each LLM call cost, what replaying recorded calls saved, and budgets.

Prices are USD per million tokens, per model, from a table the user can replace
(``LLMConfig(prices=...)``). A dated model name as the API returns it (``gpt-4o-mini-2024-07-18``) is
priced as its base model. A model missing from the table costs ``None`` with a warning: never a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .._base.prices import ModelPrice, price_for

log = logging.getLogger("agentshards")


_warned: set[str] = set()


@dataclass(frozen=True)
class Usage:
    """Token counts of one answered call, whichever API reported them."""

    model: str | None
    input_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None


def usage_of(response: dict[str, Any]) -> Usage:
    """Chat completions report prompt/completion tokens; the Responses API input/output tokens."""
    usage = response.get("usage") or {}
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        details = usage.get("prompt_tokens_details") or {}
        return Usage(response.get("model"), usage.get("prompt_tokens"), details.get("cached_tokens"),
                     usage.get("completion_tokens"))
    details = usage.get("input_tokens_details") or {}
    return Usage(response.get("model"), usage.get("input_tokens"), details.get("cached_tokens"),
                 usage.get("output_tokens"))


def cost_of(usage: Usage, prices: tuple[tuple[str, ModelPrice], ...]) -> float | None:
    """USD for one call, or None (with one warning per model) when the model or the counts are unknown."""
    price = price_for(usage.model, prices)
    if price is None or usage.input_tokens is None or usage.output_tokens is None:
        if usage.model not in _warned:
            _warned.add(str(usage.model))
            log.warning("no price for model %r: its calls are recorded with cost NULL "
                        "(add it to LLMConfig(prices=...))", usage.model)
        return None
    cached = min(usage.cached_tokens or 0, usage.input_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return ((usage.input_tokens - cached) * price.input + cached * cached_rate
            + usage.output_tokens * price.output) / 1_000_000


@dataclass(frozen=True)
class Spend:
    """Money for one run or one agent. ``unpriced_calls`` were made but have no price (cost NULL)."""

    spent_usd: float
    calls: int
    unpriced_calls: int
    saved_usd: float
    replayed_calls: int
    in_flight_calls: int
    unrecorded_estimate_usd: float | None
    """In-flight calls (sent, never answered or recorded) priced at the mean recorded call: an estimate."""
    input_tokens: int
    output_tokens: int
