"""Ownership: which node runs which agent, decided by conditional writes on the agent's manifest entry.

The entry (``manifest/<agent_id>.json``) names the owner node and a generation that only grows. A node
writes it only with a conditional PUT: If-None-Match to create it, If-Match on the ETag it read to claim
it (which raises the generation) and on the ETag it last wrote for every later write. So once another node
has claimed an agent, every write of its previous owner fails (``OwnershipLost``): that node stops the
agent and writes nothing more for it, and its Litestream uploads go to its own generation's path, which no
restore reads once the new owner's generation is live. ``docs/ownership.md`` tells the whole protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from .._base.errors import AgentOwned, OwnershipLost
from .manifest import DELETE, ManifestEntry, decode, encode
from .objectstore import ObjectNotFound, ObjectStore
from .replica import ReplicaTarget

log = logging.getLogger("agentshards")


@dataclass(frozen=True)
class Record:
    """An agent's entry as read (or last written) and the ETag that identifies that very version."""

    entry: ManifestEntry
    etag: str


class Ownership:
    """This node's side of the protocol: the records it created or claimed, each with the ETag it last wrote.

    Thread-safe: agents are prepared and finalised from small thread pools, one agent per thread at a time.
    """

    def __init__(self, store: ObjectStore, target: ReplicaTarget, node: str, dir_id: str) -> None:
        self.store, self.target, self.node, self.dir_id = store, target, node, dir_id
        self._held: dict[str, Record] = {}
        self._lock = threading.Lock()

    def read(self, agent_id: str) -> Record | None:
        try:
            data, etag = self.store.get_etag(self.target.manifest_key(agent_id))
        except ObjectNotFound:
            return None
        return Record(decode(data), etag)

    def holds(self, agent_id: str) -> bool:
        with self._lock:
            return agent_id in self._held

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def generation(self, agent_id: str) -> int:
        with self._lock:
            record = self._held.get(agent_id)
        if record is None:
            raise OwnershipLost("this node does not own it", agent_id=agent_id, hint="claim it first")
        return record.entry.generation

    def entry(self, agent_id: str) -> ManifestEntry | None:
        with self._lock:
            record = self._held.get(agent_id)
        return None if record is None else record.entry

    def create(self, entry: ManifestEntry, *, owned: bool = True) -> Record | None:
        """Write a new entry (If-None-Match); None when the agent has one already. ``owned``: this node takes
        it at generation 1 (a launch); otherwise nobody owns it yet (a submit: ``queued``)."""
        if owned:
            entry = replace(entry, node=self.node, generation=1, live=0, dir_id=self.dir_id)
        else:
            entry = replace(entry, node=None, generation=0, live=0, dir_id=None)
        etag = self.store.put_if(self.target.manifest_key(entry.agent_id), encode(entry), None)
        if etag is None:
            current = self.read(entry.agent_id)  # a retried PUT of ours whose first answer was lost?
            if current is None or current.entry != entry:
                return None
            etag = current.etag
        record = Record(entry, etag)
        if owned:
            with self._lock:
                self._held[entry.agent_id] = record
        return record

    def claim(self, seen: Record, **changes: Any) -> Record | None:
        """Take the agent from the version ``seen`` (If-Match on its ETag), one generation up; None when the
        entry changed since it was read (another node was faster, or its owner wrote again: alive)."""
        entry = replace(seen.entry, node=self.node, generation=seen.entry.generation + 1, dir_id=self.dir_id,
                        updated_at=time.time(), **changes)
        etag = self.store.put_if(self.target.manifest_key(entry.agent_id), encode(entry), seen.etag)
        if etag is None:
            current = self.read(entry.agent_id)
            if current is None or current.entry != entry:
                return None
            etag = current.etag
        record = Record(entry, etag)
        with self._lock:
            self._held[entry.agent_id] = record
        return record

    def update(self, agent_id: str, **changes: Any) -> ManifestEntry:
        """Write the owned entry with ``changes`` (If-Match on the ETag this node last wrote). OwnershipLost
        when another node claimed the agent meanwhile: the caller must stop it and write nothing more."""
        with self._lock:
            record = self._held.get(agent_id)
        if record is None:
            raise OwnershipLost("this node no longer owns it", agent_id=agent_id,
                                hint="another node claimed it; this node writes nothing more for it")
        if record.entry.request == DELETE:  # an agent being deleted stays so: only the deleting command settles it
            changes = {**changes, "request": DELETE, "request_reason": record.entry.request_reason}
        entry = replace(record.entry, updated_at=time.time(), **changes)
        key = self.target.manifest_key(agent_id)
        etag = self.store.put_if(key, encode(entry), record.etag)
        if etag is None:
            current = self.read(agent_id)
            if current is not None and current.entry == entry:
                etag = current.etag  # this very write, retried by the client after a lost answer
            elif (current is not None and current.entry.node == self.node
                  and current.entry.generation == record.entry.generation):
                # An earlier write of ours that landed late, or an operator's request (``_fleet/requests.py``):
                # the request is kept unless this very write settles it (a delete only its command settles).
                if "request" not in changes or current.entry.request == DELETE:
                    entry = replace(entry, request=current.entry.request,
                                    request_reason=current.entry.request_reason)
                etag = self.store.put_if(key, encode(entry), current.etag)
            elif current is None:  # the entry vanished (a wiped bucket): ours again only if nobody wrote it first
                etag = self.store.put_if(key, encode(entry), None)
                if etag is not None:
                    log.warning("agent %s: its manifest entry had vanished from the replica (bucket wiped?); "
                                "written again by its owner, node %s", agent_id, self.node)
            if etag is None:
                with self._lock:
                    self._held.pop(agent_id, None)
                holder = "nobody" if current is None else f"node {current.entry.node} (generation " \
                                                          f"{current.entry.generation})"
                raise OwnershipLost(f"another node claimed it: the manifest now names {holder}", agent_id=agent_id,
                                    hint="this node's lease lapsed or it was partitioned; it stopped the agent, "
                                         "which resumes on its new owner")
        with self._lock:
            self._held[agent_id] = Record(entry, etag)
        return entry

    def release(self, agent_id: str, **changes: Any) -> ManifestEntry:
        """Hand the agent back (the entry names no node): any node may claim it at once. Only after its final
        sync was confirmed, or whoever claims it resumes from an older state than this node ran."""
        entry = self.update(agent_id, node=None, **changes)
        with self._lock:
            self._held.pop(agent_id, None)
        return entry

    def forget(self, agent_id: str) -> None:
        """Stop tracking an agent without writing (this node lost it, or is fenced)."""
        with self._lock:
            self._held.pop(agent_id, None)


def refuse_owned(record: Record, reason: str) -> AgentOwned:
    entry = record.entry
    return AgentOwned(f"node {entry.node} owns it (generation {entry.generation}); {reason}", node=entry.node,
                      agent_id=entry.agent_id,
                      hint="one node writes an agent at a time; if that node is gone, pass --take-over "
                           "(take_over=True): this node watches that node's lease for its TTL plus margin and "
                           "claims the agent only if nobody renewed it")
