"""Nodes as other nodes see them: their leases under ``<prefix>/nodes/``, watched on this node's clock.

Each node holds ``nodes/<node_id>.json`` (a ``Lease`` with that key, renewed every third of its TTL). A
node is *expired* for a watcher once the watcher has seen the same ETag, unchanged, for the node's TTL
plus margin on its own monotonic clock (the holder stopped writing by its TTL minus margin, see
``lease.py``), and the watcher has then replaced that lease with a tombstone by a conditional PUT on that
very ETag: a node that was only paused finds its lease gone at its next renewal and fences itself, and a
renewal that landed meanwhile makes the tombstone fail (the node is alive). A node without a lease object
left cleanly (it deletes its lease last, after its Litestream stopped) and owns nothing any more.

``nodes/<node_id>.drain`` asks that node to hand its agents back and stop (``agentshards drain``); it shows
in the same one LIST a node makes of ``nodes/`` per scan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .._base.errors import InvalidInputs
from .lease import LeaseInfo
from .objectstore import ObjectNotFound, ObjectStore
from .replica import ReplicaTarget

log = logging.getLogger("agentshards")

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TOMBSTONE = b'{"expired": true}'
# the ETags a tombstone gets: S3's for a single PUT (the MD5, quoted) and the directory store's (SHA-256), so a
# LIST tells a tombstone from a lease without a GET (on a server with other ETags it costs one GET)
TOMBSTONE_ETAGS = frozenset({f'"{hashlib.md5(TOMBSTONE).hexdigest()}"', hashlib.sha256(TOMBSTONE).hexdigest()})


def validate_node_id(node_id: object) -> str:
    """Node ids become S3 keys: letters, digits, '.', '_' and '-', at most 100 characters."""
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id) or node_id.endswith((".", ".drain")):
        raise InvalidInputs(f"invalid node id {node_id!r}",
                            hint="use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return node_id


def new_node_id() -> str:
    """The host name and a random suffix: readable in `agentshards nodes`, unique per process start."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60].strip(".-") or "node"
    return f"{host}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Seen:
    etag: str
    since: float  # this watcher's clock when it first saw this ETag


@dataclass(frozen=True)
class NodeInfo:
    """One node as `agentshards nodes` shows it."""

    node_id: str
    host: str | None
    capacity: int | None
    last_renewal_at: float | None  # the node's own wall clock, for display
    expired: bool
    draining: bool


class NodeWatch:
    """Other nodes' leases, as this node has watched them. One LIST of ``nodes/`` per ``refresh``.

    List the ownership records *before* refreshing: a node writes its lease before it claims anything, so a
    record listed earlier names a node whose lease the later LIST shows, unless that node has left.
    """

    def __init__(self, store: ObjectStore, target: ReplicaTarget, *, clock: Callable[[], float] = time.monotonic,
                 default_terms: tuple[float, float] = (30.0, 5.0)) -> None:
        self.store, self.target, self.clock = store, target, clock
        self.default_terms = default_terms
        self._seen: dict[str, _Seen] = {}
        self._first_etag: dict[str, str] = {}  # the ETag of each node when a wait on it began
        self._gone: set[str] = set()  # nodes seen without a lease, or expired by this watcher
        self._terms: dict[str, LeaseInfo] = {}  # each node's lease body as first read: its TTL and margin
        self.present: set[str] = set()
        self.draining: set[str] = set()
        self._refreshed_at: float | None = None
        self._lock = threading.RLock()

    def refresh(self, *, max_age_s: float = 0.0) -> None:
        with self._lock:
            if self._refreshed_at is not None and self.clock() - self._refreshed_at < max_age_s:
                return
            self._refresh()

    def _refresh(self) -> None:
        prefix = self.target.nodes_prefix()
        listing = self.store.list_etags(prefix)
        present, draining = set(), set()
        now = self.clock()
        for key, etag in listing.items():
            name = key[len(prefix):]
            if name.endswith(".drain"):
                draining.add(name[: -len(".drain")])
            elif name.endswith(".json") and "/" not in name:
                node = name[: -len(".json")]
                present.add(node)
                seen = self._seen.get(node)
                if seen is None or seen.etag != etag:
                    self._seen[node] = _Seen(etag, now)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        self.present, self.draining, self._refreshed_at = present, draining, now

    def renewed_since_watch(self, node: str) -> bool:
        """Whether ``node``'s lease changed since this watcher first looked at it (it is alive)."""
        with self._lock:
            seen = self._seen.get(node)
            first = self._first_etag.setdefault(node, seen.etag if seen else "")
            return seen is not None and seen.etag != first

    def info(self, node: str) -> LeaseInfo | None:
        """The node's lease body as first read (its terms do not change while it lives: one GET per node);
        None for a tombstone or a missing lease."""
        with self._lock:
            if node in self._terms:
                return self._terms[node]
            seen = self._seen.get(node)
            if seen is None:
                return None
            try:
                data, etag = self.store.get_etag(self.target.node_key(node))
            except ObjectNotFound:
                self._gone.add(node)
                return None
            if data == TOMBSTONE:
                self._gone.add(node)
                return None
            if etag != seen.etag:  # renewed since the LIST: it is alive, watch the new ETag from now
                self._seen[node] = _Seen(etag, self.clock())
            try:
                self._terms[node] = LeaseInfo.parse(data)
            except (ValueError, TypeError) as exc:
                log.warning("node %s: unreadable lease (%s); treated as a lease with the default terms", node, exc)
                self._terms[node] = LeaseInfo(node, 0, *self.default_terms, None)
            return self._terms[node]

    def gone(self, node: str | None) -> bool:
        """True when ``node`` has no lease at all: it left cleanly, or a watcher expired it."""
        if node is None:
            return True
        with self._lock:
            if node in self._gone or node not in self.present:
                return True
            if self._seen[node].etag in TOMBSTONE_ETAGS:
                self._gone.add(node)
                return True
            return False

    def overdue(self, node: str) -> float:
        """Seconds left before this watcher may expire ``node`` (<= 0: now)."""
        info = self.info(node)
        seen = self._seen.get(node)
        if seen is None or info is None:
            return 0.0
        ttl = info.ttl_s if info.ttl_s is not None else self.default_terms[0]
        margin = info.margin_s if info.margin_s is not None else self.default_terms[1]
        return seen.since + ttl + margin - self.clock()

    def expire(self, node: str) -> bool:
        """Replace ``node``'s lease with a tombstone, conditionally on the ETag watched unchanged for its TTL
        plus margin. True when the node is now gone; False when it renewed (it is alive) or is not overdue."""
        with self._lock:
            if self.gone(node):
                return True
            if self.overdue(node) > 0:
                return False
            seen = self._seen[node]
            written = self.store.put_if(self.target.node_key(node), TOMBSTONE, seen.etag)
            if written is None:
                try:
                    data, etag = self.store.get_etag(self.target.node_key(node))
                except ObjectNotFound:
                    self._gone.add(node)
                    return True
                if data == TOMBSTONE:
                    self._gone.add(node)
                    return True
                self._seen[node] = _Seen(etag, self.clock())  # it renewed: alive
                return False
            log.warning("node %s: its lease was not renewed for its TTL plus margin; expired it, its agents go to "
                        "the nodes alive", node)
            self._gone.add(node)
            return True


def request_drain(store: ObjectStore, target: ReplicaTarget, node: str) -> None:
    """Ask ``node`` to hand its agents back and stop (it sees the marker at its next scan)."""
    store.put(target._join("nodes", f"{validate_node_id(node)}.drain"),
              json.dumps({"requested_at": time.time()}).encode())


def clear_drain(store: ObjectStore, target: ReplicaTarget, node: str) -> None:
    store.delete(target._join("nodes", f"{node}.drain"))


def list_nodes(store: ObjectStore, target: ReplicaTarget) -> list[NodeInfo]:
    """Every node with a lease object under the prefix (a live one, or a tombstone left by a take-over)."""
    prefix = target.nodes_prefix()
    listing = store.list_etags(prefix)
    drains = {k[len(prefix):-len(".drain")] for k in listing if k.endswith(".drain")}
    nodes = []
    for key in sorted(listing):
        name = key[len(prefix):]
        if not name.endswith(".json") or "/" in name:
            continue
        node = name[: -len(".json")]
        try:
            data = store.get(key)
        except ObjectNotFound:
            continue
        if data == TOMBSTONE:
            nodes.append(NodeInfo(node, None, None, None, True, node in drains))
            continue
        try:
            raw = json.loads(data)
        except ValueError:
            raw = {}
        expires = raw.get("expires_at")
        ttl = raw.get("ttl_s")
        renewed = None if expires is None or ttl is None else float(expires) - float(ttl)
        nodes.append(NodeInfo(node, raw.get("host"), raw.get("capacity"), renewed, False, node in drains))
    return nodes
