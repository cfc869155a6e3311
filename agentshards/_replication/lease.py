"""A node's lease: the proof that a node is alive, which every claim of its agents has to outwait.

Litestream does not fence: two nodes replicating one agent can leave its replica unrestorable. So each
node holds a lease object of its own (``<prefix>/nodes/<node_id>.json``; before nodes, one
``<prefix>/lease.json`` per prefix), created with a conditional PUT (If-None-Match) and renewed with
If-Match on the ETag it last wrote. Every rule is judged on the judging node's own monotonic clock, never on another
machine's wall clock:

- The holder must have stopped writing to the prefix by the start of its last successful renewal request
  plus TTL minus a margin (``deadline``); ``LeaseKeeper`` renews from a thread of its own and enforces it.
- A taker replaces a lease only after it has seen the same ETag, unchanged, for the holder's TTL plus
  margin (both travel in the body) counted from its own first look; the holder has stopped by then.
  The body's ``expires_at`` is the holder's wall clock, shown to people, never compared.
- Each body carries a sequence number, so a body identifies the one request that wrote it: a 412 whose
  stored body is byte-equal to a body this node sent (an HTTP retry of a PUT that had succeeded) is this
  node's own write, not a loss.
- Before any of this, ``probe_conditional_writes`` checks that the server honours If-None-Match and
  If-Match on PUT; a server that ignores them would let two nodes both "hold" the lease.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .._base.errors import InvalidReplica, LeaseError
from .objectstore import ConditionalWritesUnsupported, ObjectNotFound, ObjectStore
from .replica import ReplicaTarget

log = logging.getLogger("agentshards")

Clock = Callable[[], float]


@dataclass(frozen=True)
class LeaseConfig:
    """A lease's terms. ``margin_s`` (default a sixth of the TTL) is how much earlier than the TTL the holder
    stops, and how much longer than the TTL a taker waits: stopping has twice the margin to complete."""

    ttl_s: float = 30.0
    margin_s: float | None = None
    take_over: bool = False

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"lease ttl_s must be > 0, not {self.ttl_s!r}")
        if not 0 <= self.margin < self.ttl_s - self.renew_every_s:
            raise ValueError(f"lease margin_s must be in [0, {self.ttl_s - self.renew_every_s:g}) for a TTL of "
                             f"{self.ttl_s:g}s: a node renews every third of the TTL and must get a chance to")

    @property
    def margin(self) -> float:
        return self.ttl_s / 6 if self.margin_s is None else self.margin_s

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3


@dataclass(frozen=True)
class LeaseInfo:
    """A lease body as read back. ``ttl_s``/``margin_s`` are None in a body written by an older version."""

    owner: str
    seq: int
    ttl_s: float | None
    margin_s: float | None
    expires_at: float | None  # the holder's wall clock: for display only
    capacity: int | None = None  # a node's (``agentshards node --capacity``); None: not a node, or not said

    @classmethod
    def parse(cls, data: bytes) -> LeaseInfo:
        raw = json.loads(data)
        def number(name: str) -> float | None:
            return None if raw.get(name) is None else float(raw[name])
        capacity = number("capacity")
        return cls(str(raw.get("owner", "?")), int(raw.get("seq", 0)), number("ttl_s"), number("margin_s"),
                   number("expires_at"), None if capacity is None else int(capacity))

    def describe(self) -> str:
        until = ("" if self.expires_at is None else
                 f", renewal #{self.seq} said until {datetime.fromtimestamp(self.expires_at, UTC):%H:%M:%S} "
                 "UTC by its own clock")
        return f"node {self.owner}{until}"


def node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_probed: set[tuple[type, str]] = set()
_probed_lock = threading.Lock()


def probe_conditional_writes(store: ObjectStore, target: ReplicaTarget) -> None:
    """InvalidReplica unless the server refuses a PUT If-None-Match on an existing key and a PUT If-Match
    with a wrong ETag. Three PUTs and a DELETE of a key of its own, once per process and server: a server
    that honoured them does not stop (a failed probe is not remembered, so it is tried again)."""
    seen = (type(store), target.describe())
    with _probed_lock:
        if seen in _probed:
            return
    _probe(store, target)
    with _probed_lock:
        _probed.add(seen)


def _probe(store: ObjectStore, target: ReplicaTarget) -> None:
    key = f"{target.lease_key()}.probe-{uuid.uuid4().hex}"
    where = target.describe()
    hint = ("the lease that keeps two nodes off one prefix needs conditional writes (AWS S3, MinIO, Ceph RGW, "
            "Cloudflare R2 and moto honour them); use such a server for the replica")
    try:
        if store.put_if(key, b"probe 1", None) is None:
            raise InvalidReplica(f"{where} refused a PUT If-None-Match on a new key", hint=hint)
        if store.put_if(key, b"probe 2", None) is not None:
            raise InvalidReplica(f"{where} ignores If-None-Match on PUT (it overwrote an existing key)", hint=hint)
        if store.put_if(key, b"probe 3", '"0123456789abcdef0123456789abcdef"') is not None:
            raise InvalidReplica(f"{where} ignores If-Match on PUT (it accepted a wrong ETag)", hint=hint)
    except ConditionalWritesUnsupported as exc:
        raise InvalidReplica(f"{where} does not implement conditional PUTs: {exc}", hint=hint) from None
    finally:
        store.delete(key)


class Lease:
    """The lease state machine of one node. Not thread-safe by itself: ``LeaseKeeper`` drives it from one
    thread; ``clock`` (monotonic) and ``sleep`` are injectable so the policy can be tested without waiting."""

    def __init__(self, store: ObjectStore, target: ReplicaTarget, config: LeaseConfig, *, owner: str | None = None,
                 clock: Clock = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 wall: Clock = time.time, key: str | None = None,
                 extra: dict[str, object] | None = None) -> None:
        self.store, self.target, self.config = store, target, config
        self.owner = owner or node_id()
        self._key = key  # None: the prefix lease of the layout before nodes
        self._extra = dict(extra or {})  # shown by `agentshards nodes` (host, capacity)
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self.seq = 0
        self._etag: str | None = None
        self._valid_from: float | None = None  # start of the last request known to have written our body
        self._pending: dict[bytes, float] = {}  # bodies sent, outcome unknown -> when their request started

    @property
    def key(self) -> str:
        return self._key or self.target.lease_key()

    @property
    def held(self) -> bool:
        return self._etag is not None

    def deadline(self) -> float:
        """When this node must have stopped writing to the prefix (its monotonic clock)."""
        if self._valid_from is None:
            return -math.inf
        return self._valid_from + self.config.ttl_s - self.config.margin

    def renew_at(self) -> float:
        """When the next renewal is due: a third of the TTL after the last one started."""
        if self._valid_from is None:
            return -math.inf
        return self._valid_from + self.config.renew_every_s

    def current(self) -> tuple[LeaseInfo, str] | None:
        try:
            data, etag = self.store.get_etag(self.key)
        except ObjectNotFound:
            return None
        return LeaseInfo.parse(data), etag

    def acquire(self) -> None:
        """Take the lease: free, or (``take_over``) held by a node that leaves it unchanged for its TTL plus
        margin. LeaseError names the holder otherwise; InvalidReplica when the server cannot fence."""
        probe_conditional_writes(self.store, self.target)
        found = self._write(None)
        if found is None:
            return
        held = self.current()
        if held is None:  # released between our PUT and our GET
            if self._write(None) is None:
                return
            raise LeaseError(f"another node took {self.target.describe()} at the same moment",
                             hint="run one supervisor (or one recover) per prefix")
        info, etag = held
        if not self.config.take_over:
            raise LeaseError(f"{self.target.describe()} is held by {info.describe()}",
                             hint="one live node per prefix; if that node is gone, pass --take-over "
                                  "(take_over=True): this node then watches the lease for its TTL plus margin and "
                                  "takes it only if nobody renewed it")
        self._take_over(info, etag)

    def _take_over(self, info: LeaseInfo, etag: str) -> None:
        if info.ttl_s is not None and info.margin_s is not None:
            wait, poll = info.ttl_s + info.margin_s, info.ttl_s / 3
        else:  # a body without terms: assume ours
            wait, poll = self.config.ttl_s + self.config.margin, self.config.renew_every_s
        seen = self.clock()  # after the GET that returned this ETag: the ETag was there at least since now
        log.warning("taking over %s: watching the lease of %s for %.1fs; it is taken only if nobody renews it",
                    self.target.describe(), info.describe(), wait)
        expect: str | None = etag
        while (left := seen + wait - self.clock()) > 0:
            self.sleep(min(left, poll))
            now = self.current()
            if now is None:  # its holder released it: no need to wait any longer
                expect = None
                break
            if now[1] != etag:
                raise LeaseError(f"{now[0].describe()} renewed the lease on {self.target.describe()} while this "
                                 "node watched it: that node is alive",
                                 hint="stop that node first, or let it finish; one live node per prefix")
        if self._write(expect) is not None:
            raise LeaseError(f"another node took {self.target.describe()} at the same moment",
                             hint="run one supervisor (or one recover) per prefix")

    def renew(self) -> None:
        """Extend the lease. LeaseError if another body replaced ours (this node must stop); the store's own
        errors (network, 5xx) pass through: the renewal may have landed, and the deadline decides."""
        if self._etag is None:
            raise LeaseError(f"this node does not hold the lease on {self.target.describe()}",
                             hint="acquire it first")
        found = self._write(self._etag)
        if found is not None:
            self._etag = None
            holder = (f"{LeaseInfo.parse(found).describe()} holds it now" if found and b'"owner"' in found
                      else "another node expired it (it was not renewed for its TTL plus margin)" if found
                      else "it was deleted")
            raise LeaseError(f"lost the lease on {self.target.describe()}: {holder}",
                             hint="another node took over the prefix; this node stopped its agents and Litestream")

    def release(self) -> None:
        """Delete the lease if it is still this node's and this node is within its deadline (past it, a taker
        may own the prefix)."""
        etag, self._etag = self._etag, None
        if etag is None or self.clock() >= self.deadline():
            return
        try:
            data, current = self.store.get_etag(self.key)
        except ObjectNotFound:
            return
        if current == etag or data in self._pending:
            self.store.delete(self.key)

    def _body(self) -> bytes:
        self.seq += 1
        return json.dumps({**self._extra, "owner": self.owner, "seq": self.seq, "ttl_s": self.config.ttl_s,
                           "margin_s": self.config.margin, "expires_at": self.wall() + self.config.ttl_s},
                          sort_keys=True).encode()

    def _write(self, expect: str | None) -> bytes | None:
        """One conditional PUT of a fresh body. None when it (or an earlier body of ours whose answer was
        lost) is what the key holds now; else the body found there (b"" for none)."""
        body = self._body()
        self._pending[body] = self.clock()  # before the request: the deadline counts from its start
        etag = self.store.put_if(self.key, body, expect)
        if etag is None:  # 412: someone else's body, or ours written by an earlier try of this very request
            try:
                found, etag = self.store.get_etag(self.key)
            except ObjectNotFound:
                return b""
            if found not in self._pending:
                return found
            body = found
        self._etag, self._valid_from = etag, self._pending[body]
        self._pending.clear()
        return None
