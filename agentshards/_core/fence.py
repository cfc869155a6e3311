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
_draining = False
_refused: set[str | None] = set()  # agents refused a request or a step since the drain began


def install(check: Check | None) -> None:
    """Make ``check`` run before every commit and LLM request of this process (None removes it)."""
    global _check
    _check = check


def drain() -> None:
    """From now on no new LLM request nor step starts in this process (a worker told to stop: SIGTERM); the
    ones in flight finish and are recorded. Safe to call from a signal handler."""
    global _draining
    _draining = True


def check_send(agent_id: str | None = None) -> None:
    """Before an LLM request: ``Draining`` once this process is stopping, then the write fence."""
    if _draining:
        from .._base.errors import Draining

        _refused.add(agent_id)
        raise Draining("its worker is stopping, so this LLM request was not sent", agent_id=agent_id,
                       hint="the run stays open and resumes from its last recorded step wherever it runs next")
    check(agent_id)


def check_start(agent_id: str | None = None, step: str | None = None) -> None:
    """Before a step's function runs: ``Draining`` once this process is stopping (recorded steps still
    replay, so a resumed agent gets to the first one it has not done)."""
    if _draining:
        from .._base.errors import Draining

        _refused.add(agent_id)
        raise Draining("its worker is stopping, so this step was not started", agent_id=agent_id, step=step,
                       hint="the run stays open and resumes from its last recorded step wherever it runs next")


def refused(agent_id: str | None) -> bool:
    """Whether the drain refused this agent something: then its run must not end in this process, even if
    the agent's code caught ``Draining`` (an ``except Exception``) and went on to return or raise."""
    return agent_id in _refused


def check(agent_id: str | None = None) -> None:
    """Raise ``Fenced`` when this process may no longer write; a no-op when no fence is installed."""
    if _check is not None:
        _check(agent_id)
