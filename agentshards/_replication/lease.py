"""The replica prefix lease: one live node per fleet prefix.

Litestream does not fence: two nodes replicating to one prefix can leave it unrestorable. So a node
holds ``<prefix>/lease.json`` (owner, expiry), created with a conditional PUT (If-None-Match) and renewed
with If-Match on the ETag it last wrote; a node that cannot renew has lost the lease and must stop.
A lease left by a dead node blocks others until its TTL passes, and even then only an explicit
take-over (``recover --take-over``) replaces it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

from .._base.errors import LeaseError
from .objectstore import ObjectNotFound, ObjectStore
from .replica import ReplicaTarget


@dataclass(frozen=True)
class LeaseInfo:
    owner: str
    expires_at: float


def node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, store: ObjectStore, target: ReplicaTarget, ttl_s: float, owner: str | None = None) -> None:
        self.store, self.target, self.ttl_s = store, target, ttl_s
        self.owner = owner or node_id()
        self._etag: str | None = None
        self.renewed_at = 0.0

    @property
    def key(self) -> str:
        return self.target.lease_key()

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s}).encode()

    def current(self) -> tuple[LeaseInfo, str] | None:
        try:
            data, etag = self.store.get_etag(self.key)
        except ObjectNotFound:
            return None
        raw = json.loads(data)
        return LeaseInfo(str(raw["owner"]), float(raw["expires_at"])), etag

    def acquire(self, *, take_over: bool = False) -> None:
        """Take the lease, or raise LeaseError naming the holder and when its lease ends."""
        etag = self.store.put_if(self.key, self._body(), None)
        if etag is None:
            held = self.current()
            if held is not None:
                info, old = held
                if info.owner != self.owner:
                    remaining = info.expires_at - time.time()
                    if remaining > 0:
                        raise LeaseError(f"{self.target.describe()} is held by node {info.owner} for another "
                                         f"{remaining:.0f}s", hint="one live node per prefix; if that node is "
                                         "gone, wait for its lease to expire and use --take-over")
                    if not take_over:
                        raise LeaseError(f"{self.target.describe()} has an expired lease of node {info.owner}",
                                         hint="if that node is really gone, pass --take-over (take_over=True)")
                etag = self.store.put_if(self.key, self._body(), old)
            else:
                etag = self.store.put_if(self.key, self._body(), None)
            if etag is None:
                raise LeaseError(f"another node took {self.target.describe()} at the same moment",
                                 hint="run one recover/supervisor per prefix")
        self._etag, self.renewed_at = etag, time.monotonic()

    def renew(self) -> None:
        """Extend the lease; LeaseError if someone else replaced it (this node must stop)."""
        etag = self.store.put_if(self.key, self._body(), self._etag)
        if etag is None:
            raise LeaseError(f"lost the lease on {self.target.describe()}",
                             hint="another node took over; this node stopped replicating and its agents")
        self._etag, self.renewed_at = etag, time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.renewed_at > self.ttl_s / 3

    def release(self) -> None:
        held = self.current()
        if held is not None and held[0].owner == self.owner:
            self.store.delete(self.key)
        self._etag = None
