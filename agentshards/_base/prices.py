"""Model prices: USD per million tokens, the table the cost ledger prices calls with.

The configuration carries the table (``LLMConfig(prices=...)``), so it lives on the ground floor beside it.
A dated model name as the API returns it (``gpt-4o-mini-2024-07-18``) is priced as its base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``cached_input=None``: cached input is billed as ordinary input."""

    input: float
    output: float
    cached_input: float | None = None


DEFAULT_PRICES: tuple[tuple[str, ModelPrice], ...] = (
    # Public list prices at the time of writing; replace them with LLMConfig(prices=...) for your contract.
    ("gpt-4o", ModelPrice(2.50, 10.00, 1.25)),
    ("gpt-4o-mini", ModelPrice(0.15, 0.60, 0.075)),
    ("gpt-4.1", ModelPrice(2.00, 8.00, 0.50)),
    ("gpt-4.1-mini", ModelPrice(0.40, 1.60, 0.10)),
    ("gpt-4.1-nano", ModelPrice(0.10, 0.40, 0.025)),
    ("o4-mini", ModelPrice(1.10, 4.40, 0.275)),
)

_DATED = re.compile(r"^(?P<base>.+?)-\d{4}-\d{2}-\d{2}$")


def price_for(model: str | None, prices: tuple[tuple[str, ModelPrice], ...]) -> ModelPrice | None:
    if not model:
        return None
    table = dict(prices)
    if model in table:
        return table[model]
    dated = _DATED.match(model)
    return table.get(dated.group("base")) if dated else None
