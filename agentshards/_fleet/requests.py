"""Cancel, retry and delete an agent whichever node runs it: requests written into its manifest entry.

An operator's command cannot reach into another machine's processes, and must never write an agent's
journal while a node runs it. So the command writes a request into the agent's manifest entry (a
conditional PUT, like every ownership write; a node's own later writes keep it, see ``Ownership.update``)
and the node that owns the agent, or the next one to claim it, carries it out:

- ``cancel``: the owner stops the agent's worker, records its run as cancelled, syncs and publishes
  ``cancelled``. An agent nobody owns (its node is gone, or it gave up) is claimed by a node that cancels
  it instead of running it; a queued agent nobody has claimed is cancelled by the command itself.
- ``retry``: a ``failed`` or ``gave_up`` agent is made claimable; the node that claims it reopens a failed
  run and runs it from its last completed step.
- ``delete``: the owner stops the agent, deletes its local shard and hands it back; the command then
  deletes its replica (every generation), archive and entry. No node claims an agent marked for deletion,
  and an owner that is gone is expired by the command as a surviving node would (its lease unrenewed for
  its TTL plus margin).

The command waits for the outcome by reading the entry; a request nobody acted on within the wait stays
in the entry, and the next owner acts on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .._base.errors import InvalidInputs, ReplicationError
from .._core.shard import validate_agent_id
from .._replication.archive import delete_replica_copies
from .._replication.manifest import CANCEL, DELETE, RETRY, ManifestEntry, delete_manifest, encode
from .._replication.nodes import NodeWatch
from .._replication.ownership import Ownership, Record
from .._replication.states import CANCELLED, CLAIMABLE, FAILED, GAVE_UP, QUEUED, SETTLED
from .run import check_replica

REQUESTS = (CANCEL, RETRY, DELETE)
_POLL_S = 0.25
_WRITE_ATTEMPTS = 20  # conditional writes lost to a node writing the same entry at that moment
T = TypeVar("T")


@dataclass(frozen=True)
class RequestOutcome:
    """What became of an operator's request: ``done`` false when no node carried it out within the wait (it
    stays in the entry)."""

    agent_id: str
    request: str
    outcome: str           # cancelled, retrying, deleted, requested
    node: str | None       # the node that acted on it (None: the command did it, or nobody yet)
    done: bool
    removed: tuple[str, ...] = ()


def claimable_with(entry: ManifestEntry) -> bool:
    """Whether a node may claim ``entry`` once nobody live owns it: its state says so, or a request needs an
    owner to carry it out (a cancel or retry of an agent that gave up or failed). Never one being deleted."""
    if entry.request == DELETE:
        return False
    if entry.request in (CANCEL, RETRY):
        return entry.status in CLAIMABLE or entry.status in (GAVE_UP, FAILED)
    return entry.status in CLAIMABLE


def cancel_in_fleet(agent_id: str, replica: str, *, reason: str = "cancelled by an operator", wait_s: float = 120.0,
                    env: Mapping[str, str] | None = None) -> RequestOutcome:
    """Cancel the agent wherever it runs (see the module docstring); InvalidInputs when it has ended."""
    fleet = _Prefix(agent_id, replica, env)

    def decide(entry: ManifestEntry) -> dict[str, Any]:
        _refuse_during_delete(entry)
        if entry.status in SETTLED:
            raise InvalidInputs(f"has ended ({entry.status}): nothing to cancel", agent_id=agent_id,
                                hint="`agentshards delete` removes an agent that has ended")
        if entry.status == QUEUED and entry.node is None and entry.generation == 0:
            return {"status": CANCELLED, "request": None, "request_reason": None}  # never ran: nothing to stop
        return {"request": CANCEL, "request_reason": reason}

    written = fleet.write(decide)
    if written.entry.status == CANCELLED:
        return RequestOutcome(agent_id, CANCEL, CANCELLED, None, True)

    def cancelled(record: Record | None) -> RequestOutcome | None:
        if record is None:
            raise InvalidInputs("was deleted before the cancel reached it", agent_id=agent_id, hint="nothing to do")
        entry = record.entry
        if entry.status == CANCELLED:
            return RequestOutcome(agent_id, CANCEL, CANCELLED, entry.node or written.entry.node, True)
        if entry.status in SETTLED or entry.request is None:  # its node found the run over, and said so
            raise InvalidInputs(f"ended ({entry.status}) before the cancel reached it", agent_id=agent_id,
                                hint="its result stands; `agentshards delete` removes it")
        return None

    return fleet.wait(cancelled, wait_s, CANCEL)


def retry_in_fleet(agent_id: str, replica: str, *, wait_s: float = 120.0,
                   env: Mapping[str, str] | None = None) -> RequestOutcome:
    """Run a failed (or given up) agent again on whichever node claims it, from its last completed step."""
    fleet = _Prefix(agent_id, replica, env)

    def decide(entry: ManifestEntry) -> dict[str, Any]:
        _refuse_during_delete(entry)
        if entry.status not in (FAILED, GAVE_UP):
            raise InvalidInputs(f"is {entry.status}: retry takes failed and gave_up agents", agent_id=agent_id,
                                hint="an agent that ended otherwise starts again only as a new run")
        if entry.node is not None and entry.request != RETRY:
            raise InvalidInputs(f"node {entry.node} still owns it", agent_id=agent_id,
                                hint="its node publishes and lets it go in a moment; try again")
        return {"request": RETRY, "request_reason": None}

    written = fleet.write(decide)

    def claimed(record: Record | None) -> RequestOutcome | None:
        if record is None:
            raise InvalidInputs("was deleted before the retry reached it", agent_id=agent_id, hint="nothing to do")
        entry = record.entry
        if entry.request == RETRY or entry.generation <= written.entry.generation:
            return None  # no node has claimed it yet
        # claimed: running on its node, or already over again (its status says how)
        return RequestOutcome(agent_id, RETRY, "retrying" if entry.node else entry.status, entry.node, True)

    return fleet.wait(claimed, wait_s, RETRY)


def delete_in_fleet(agent_id: str, replica: str, *, wait_s: float = 120.0,
                    env: Mapping[str, str] | None = None) -> RequestOutcome:
    """Delete the agent everywhere: its owner (if any) stops it and deletes its local shard, then the replica,
    the archive and the entry go. NotFound-like InvalidInputs when the prefix has no such agent."""
    fleet = _Prefix(agent_id, replica, env)
    written = fleet.write(lambda entry: {"request": DELETE, "request_reason": None})
    owner = written.entry.node
    watch = NodeWatch(fleet.store, fleet.target)

    def let_go(record: Record | None) -> Record | None:
        if record is None or record.entry.node is None:
            return record if record is not None else Record(written.entry, "")
        watch.refresh()
        if watch.gone(record.entry.node) or watch.expire(record.entry.node):
            return record  # its node is gone: nobody else may claim it (the request says delete)
        return None

    if owner is not None:
        outcome = fleet.wait(let_go, wait_s, DELETE)
        if isinstance(outcome, RequestOutcome):
            return outcome
    removed = delete_replica_copies(agent_id, fleet.target, fleet.store)
    delete_manifest(fleet.store, fleet.target, agent_id)
    return RequestOutcome(agent_id, DELETE, "deleted", owner, True, (*removed, "manifest"))


def _refuse_during_delete(entry: ManifestEntry) -> None:
    if entry.request == DELETE:
        raise InvalidInputs("an operator is deleting it", agent_id=entry.agent_id,
                            hint="`agentshards delete --fleet` finishes the deletion")


class _Prefix:
    """One agent's entry in one prefix, read and written the way nodes do."""

    def __init__(self, agent_id: str, replica: str, env: Mapping[str, str] | None) -> None:
        self.agent_id = validate_agent_id(agent_id)
        self.target, self.store = check_replica(replica, dict(os.environ if env is None else env))
        self.ownership = Ownership(self.store, self.target, node="operator", dir_id="")

    def write(self, decide: Callable[[ManifestEntry], dict[str, Any]]) -> Record:
        """Apply ``decide``'s changes to the entry by If-Match, reading again after each lost race."""
        for _ in range(_WRITE_ATTEMPTS):
            record = self.ownership.read(self.agent_id)
            if record is None:
                raise InvalidInputs("no agent with this id in the replica", agent_id=self.agent_id,
                                    hint="`agentshards fleet --replica URL` lists the agents")
            changes = decide(record.entry)
            entry = replace(record.entry, updated_at=time.time(), **changes)
            etag = self.store.put_if(self.target.manifest_key(self.agent_id), encode(entry), record.etag)
            if etag is not None:
                return Record(entry, etag)
        raise ReplicationError(f"its manifest entry changed {_WRITE_ATTEMPTS} times while the request was written",
                               agent_id=self.agent_id, hint="a node is busy with it; try again")

    def wait(self, done: Callable[[Record | None], T | None], wait_s: float, request: str) -> T | RequestOutcome:
        """Read the entry until ``done`` says what became of the request; at the deadline, say it is pending."""
        deadline = time.monotonic() + wait_s
        while True:
            result = done(self.ownership.read(self.agent_id))
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                current = self.ownership.read(self.agent_id)
                node = current.entry.node if current is not None else None
                return RequestOutcome(self.agent_id, request, "requested", node, False)
            time.sleep(_POLL_S)

