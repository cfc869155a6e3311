"""The fleet manifest: one small JSON object per agent beside the replicas.

A fresh machine lists ``<prefix>/manifest/`` to learn every agent's state (status, target, inputs digest,
code fingerprint) without restoring a single file. The entry is also the agent's ownership record
(``node``, ``generation``, ``live``): nodes write it only with conditional PUTs (see ``ownership.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .objectstore import ObjectNotFound, ObjectStore
from .replica import ReplicaTarget

MANIFEST_VERSION = 1
CANCEL, RETRY, DELETE = "cancel", "retry", "delete"
"""An operator's requests, carried out by the agent's node (``_fleet/requests.py``)."""


@dataclass(frozen=True)
class ManifestEntry:
    agent_id: str
    status: str
    target: str
    input_digest: str
    run_id: str
    code_fingerprint: str | None
    steps: int
    updated_at: float
    version: int = MANIFEST_VERSION
    archive_key: str | None = None
    archive_sha256: str | None = None
    cost_usd: float | None = None
    inputs_json: str | None = None
    """The run's inputs: a fresh node can start an agent whose replica holds no run yet (killed before
    Litestream's first upload) from the beginning instead of failing the whole recovery."""
    node: str | None = None
    """The node that owns the agent now; None when nobody does (queued, handed back, or finished)."""
    generation: int = 0
    """Grows by one with every claim: the owner replicates to this generation's path of its own."""
    live: int = 0
    """The generation a restore reads: the newest one known to hold a snapshot (0: the agent prefix itself,
    which is also where the layout before generations replicated)."""
    dir_id: str | None = None
    """The data dir the owner runs it from: a node finding its own data dir here may trust its local shard
    (nobody else wrote to the agent since); any other claim restores from the live generation."""
    request: str | None = None
    """An operator's request (``cancel``, ``retry``, ``delete``) for whichever node owns the agent or claims
    it next; the node that carries it out clears it (``_fleet/requests.py``)."""
    request_reason: str | None = None


def encode(entry: ManifestEntry) -> bytes:
    return json.dumps(asdict(entry), sort_keys=True).encode()


def decode(data: bytes) -> ManifestEntry:
    return _entry(json.loads(data))


def write_manifest(store: ObjectStore, target: ReplicaTarget, entry: ManifestEntry) -> None:
    store.put(target.manifest_key(entry.agent_id), encode(entry))


def read_manifest(store: ObjectStore, target: ReplicaTarget, agent_id: str) -> ManifestEntry | None:
    try:
        data = json.loads(store.get(target.manifest_key(agent_id)))
    except ObjectNotFound:
        return None
    return _entry(data)


def _entry(data: dict[str, object]) -> ManifestEntry:
    """Tolerate fields a newer agentshards added: keep the ones this version knows."""
    known = set(ManifestEntry.__dataclass_fields__)
    return ManifestEntry(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


def delete_manifest(store: ObjectStore, target: ReplicaTarget, agent_id: str) -> None:
    store.delete(target.manifest_key(agent_id))


def list_manifests(store: ObjectStore, target: ReplicaTarget) -> list[ManifestEntry]:
    entries = []
    for key in store.list(target.manifest_prefix()):
        if key.endswith(".json"):
            entries.append(_entry(json.loads(store.get(key))))
    return sorted(entries, key=lambda e: e.agent_id)
