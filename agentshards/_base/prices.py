"""Model prices: what the cost ledger charges a call, from the user's table first, then a maintained catalogue.

Hand-typed list prices go stale within months, so the defaults come from ``genai-prices`` (a maintained
table of provider prices, shipped as data inside the wheel; its remote-update feature is never started
here, so pricing never touches the network). A user's own table (``LLMConfig(prices=...)``, USD per
million tokens) still takes precedence, for contract prices or models the catalogue lacks. A model
missing from both costs ``None``: the ledger records NULL and warns instead of guessing.

The catalogue is a large module (~0.5 s to import): it loads on the first call that the user's table
cannot price, never at ``import agentshards``.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``cached_input=None``: cached input is billed as ordinary input."""

    input: float
    output: float
    cached_input: float | None = None


DEFAULT_PRICES: tuple[tuple[str, ModelPrice], ...] = ()
"""The user's table is empty unless given: every model is priced from the catalogue."""

CATALOGUE_PROVIDER = "openai"
"""The provider whose catalogue prices apply: the durable facade speaks the OpenAI API."""

_DATED = re.compile(r"^(?P<base>.+?)-\d{4}-\d{2}-\d{2}$")
_catalogue_lock = threading.Lock()
_failed: set[str] = set()
log = logging.getLogger("agentshards")


def price_for(model: str | None, prices: tuple[tuple[str, ModelPrice], ...]) -> ModelPrice | None:
    """The user's price for ``model``; a dated name as the API returns it is priced as its base model."""
    if not model or not prices:
        return None
    table = dict(prices)
    if model in table:
        return table[model]
    dated = _DATED.match(model)
    return table.get(dated.group("base")) if dated else None


def catalogue_cost(model: str, input_tokens: int, cached_tokens: int, output_tokens: int) -> float | None:
    """USD for one call at the catalogue's current price, or None when the catalogue does not know the model.

    The catalogue computes the whole call (tiered prices included), so its figure is used as it is.
    ``input_tokens`` counts cached tokens too, as both APIs report them.
    """
    with _catalogue_lock:  # the catalogue's lookup cache is a plain dict; its first import is heavy
        import genai_prices

        try:
            usage = genai_prices.Usage(input_tokens=input_tokens, cache_read_tokens=cached_tokens,
                                       output_tokens=output_tokens)
            result = genai_prices.calc_price(usage, model, provider_id=CATALOGUE_PROVIDER,
                                             genai_request_timestamp=datetime.now(UTC))
        except LookupError:
            return None
        except Exception as exc:  # pricing must never cost a call that is already paid for its record
            if model not in _failed:
                _failed.add(model)
                log.warning("the price catalogue could not price a call of %r (%s): recorded with cost NULL",
                            model, exc)
            return None
    return float(result.total_price)
