"""The states an agent's manifest entry publishes: the one list, and what each means to a fresh node.

A fresh machine decides what to restore and run from the manifest alone, so a state may claim an ending
only once the replica holds the transaction that recorded it. Until then the entry says ``unsynced``,
and a recovery takes it: nothing of a run's end is silently lost with the node that ran it.

=====================  ==============================================  ======================  ==================
state                  the agent's run                                 recover, restore --all  retry (on the node
                                                                                               with its shard)
=====================  ==============================================  ======================  ==================
``queued``             submitted; no node has started it yet (nodes    starts it               no
                       claim it)
``running``            open: launched, running, or stopped mid-way     restores and runs it    resumes it
``unsynced``           ended on its node; the replica was not          restores and runs it    as its ending says
                       confirmed to hold the end (a restored copy
                       that has the end reports it, one that lacks
                       it resumes)
``gave_up``            open: its supervisor stopped restarting it      restores and runs it    resumes it
                       after ``max_restarts`` (the reason is in the
                       fleet's results and the agent's log)
``succeeded``          ended with a result; the replica holds the end  skipped                 no
``failed``             ended with the agent's own error; replicated    skipped                 reopens it
``budget_exceeded``    ended over its LLM budget; replicated           skipped                 no (a new run)
``cancelled``          ended by an operator; replicated                skipped                 no (a new run)
``archived``           ended; one verified object under ``archive/``   skipped                 no (fetch it)
=====================  ==============================================  ======================  ==================

A state this version does not know (written by a newer one) counts as unfinished: restoring and running
an agent whose run ended only reports that ending again, while skipping one that had not ended loses it.

Nodes (``_fleet/node.py``) claim by themselves what is ``queued``, and what is ``running`` or ``unsynced``
while no live node owns it (``CLAIMABLE``); a ``gave_up`` agent crashed its workers ``max_restarts`` times and
waits for an operator (``retry``, ``recover``), or it would crash every node in turn.
"""

from __future__ import annotations

from .._core.journal import BUDGET_EXCEEDED, CANCELLED, FAILED, FINAL, RUNNING, SUCCEEDED

QUEUED = "queued"
UNSYNCED = "unsynced"
GAVE_UP = "gave_up"
ARCHIVED = "archived"

ENDED = frozenset(FINAL)
"""Endings a run records in its journal; published only with a confirmed sync, else as ``unsynced``."""
UNFINISHED = frozenset({QUEUED, RUNNING, UNSYNCED, GAVE_UP})
"""What recover and ``restore --all`` take."""
CLAIMABLE = frozenset({QUEUED, RUNNING, UNSYNCED})
"""What a node takes by itself once nobody live owns it."""
SETTLED = ENDED | {ARCHIVED}
STATES = UNFINISHED | SETTLED

__all__ = ["ARCHIVED", "BUDGET_EXCEEDED", "CANCELLED", "CLAIMABLE", "ENDED", "FAILED", "GAVE_UP", "QUEUED", "RUNNING",
           "SETTLED", "STATES", "SUCCEEDED", "UNFINISHED", "UNSYNCED", "is_unfinished", "published"]


def is_unfinished(state: str) -> bool:
    """True when recover and ``restore --all`` take an agent published in ``state``."""
    return state not in SETTLED


def published(run_status: str | None, *, synced: bool, gave_up: bool = False) -> str:
    """The state to publish for an agent whose latest run (in its journal) has ``run_status``.

    ``synced``: the replica was confirmed to hold every transaction committed so far. ``gave_up``: the
    supervisor stopped restarting the agent. The journal, not the supervisor, says whether the run ended:
    a run that is still open is never published as an ending.
    """
    if run_status in ENDED:
        return run_status if synced else UNSYNCED
    return GAVE_UP if gave_up else RUNNING
