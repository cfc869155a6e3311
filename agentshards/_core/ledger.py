"""The cost ledger: what each LLM call cost, what replaying recorded calls saved, and budgets.

Prices are USD per million tokens, per model: the user's own table (``LLMConfig(prices=...)``) first,
then the maintained catalogue (see ``agentshards._base.prices``). A model neither knows costs ``None``
with a warning: never a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .._base.prices import ModelPrice, catalogue_cost, price_for

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
    """USD for one call: the user's table, else the price catalogue; None (one warning per model) when
    neither knows the model or the provider reported no token counts."""
    if usage.input_tokens is None or usage.output_tokens is None:
        _warn_unpriced(usage.model)
        return None
    cached = min(usage.cached_tokens or 0, usage.input_tokens)
    price = price_for(usage.model, prices)
    if price is None:
        cost = None if not usage.model else catalogue_cost(usage.model, usage.input_tokens, cached,
                                                             usage.output_tokens)
        if cost is None:
            _warn_unpriced(usage.model)
        return cost
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return ((usage.input_tokens - cached) * price.input + cached * cached_rate
            + usage.output_tokens * price.output) / 1_000_000


def _warn_unpriced(model: str | None) -> None:
    if model not in _warned:
        _warned.add(str(model))
        log.warning("no price for model %r: its calls are recorded with cost NULL "
                    "(add it to LLMConfig(prices=...))", model)


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
