"""How values become journal JSON, and back.

Strict JSON (no NaN/Infinity) so the stored text is valid for any reader; the first run returns
``json.loads`` of what it stored, so a first run and a replay see identical values (tuples come back as
lists in both, for example) and code cannot depend on something the journal could not reproduce.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .._base.errors import ResultNotStorable

MAX_VALUE_CHARS = 32 * 1024 * 1024
"""One journaled value (a step's result, a run's inputs) is at most this long as JSON. Every byte is
written to the shard, replicated and replayed on resume; bulk data belongs in object storage, with its
key in the journal."""


def dumps(value: Any, *, agent_id: str, step: str | None, what: str = "result") -> str:
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ResultNotStorable(
            f"{what} of type {type(value).__name__} cannot be stored as JSON: {exc}",
            agent_id=agent_id,
            step=step,
            hint="return JSON-able values (dict, list, str, int, float, bool, None), e.g. obj.model_dump()",
        ) from exc
    if len(text) > MAX_VALUE_CHARS:
        raise ResultNotStorable(
            f"{what} is {len(text):,} characters as JSON, over the {MAX_VALUE_CHARS:,} limit",
            agent_id=agent_id, step=step,
            hint="store bulk data elsewhere (a file, an object store) and return its key")
    return text


def loads(text: str) -> Any:
    return json.loads(text)


def canonical(value: Any) -> str:
    """Key-sorted compact JSON: equal inputs give equal text, whatever their dict order."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
