"""The write fence of a fleet worker: one check before every journal commit and every LLM request.

A worker's supervisor holds the replica prefix's lease; a supervisor that is paused (SIGSTOP, a VM frozen,
swap storms) cannot kill its workers when that lease lapses, and another node may then take the prefix over.
So a worker fences itself: the fleet installs a check here that raises ``Fenced`` once the supervisor's lease
deadline has passed, and the journal and the LLM facade call :func:`check` before they commit or send.

Process-wide on purpose: a worker runs many agents, and all of them stop at the one deadline. Nothing is
installed outside fleet workers with a replica, and then :func:`check` costs one global lookup.
"""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[str | None], None]
"""Called with the agent id (when known); raises ``Fenced`` past the deadline, else returns."""

_check: Check | None = None


def install(check: Check | None) -> None:
    """Make ``check`` run before every commit and LLM request of this process (None removes it)."""
    global _check
    _check = check


def check(agent_id: str | None = None) -> None:
    """Raise ``Fenced`` when this process may no longer write; a no-op when no fence is installed."""
    if _check is not None:
        _check(agent_id)
