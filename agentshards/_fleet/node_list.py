"""The nodes of a prefix as an operator sees them, and the drain request: read and written from any machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any


def node_table(replica: str, *, env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every node with a lease object under the prefix, with the number of agents its entries name."""
    from .._replication.manifest import list_manifests
    from .._replication.nodes import list_nodes
    from .._replication.objectstore import store_for
    from .._replication.replica import parse_replica

    env = os.environ if env is None else env
    target = parse_replica(replica, env)
    store = store_for(target, env)
    store.check_readable()  # a read-only command: a mistyped replica is an error, never created
    owned: dict[str, int] = {}
    for entry in list_manifests(store, target):
        if entry.node is not None:
            owned[entry.node] = owned.get(entry.node, 0) + 1
    return [{**asdict(info), "agents": owned.get(info.node_id, 0)} for info in list_nodes(store, target)]


def drain_node(replica: str, node_id: str, *, env: Mapping[str, str] | None = None) -> None:
    """Ask a node to drain (it sees the request at its next scan, hands its agents back and exits)."""
    from .._base.errors import InvalidInputs
    from .._replication.nodes import list_nodes, request_drain, validate_node_id
    from .._replication.objectstore import store_for
    from .._replication.replica import parse_replica

    env = os.environ if env is None else env
    target = parse_replica(replica, env)
    store = store_for(target, env)
    store.check_readable()
    validate_node_id(node_id)
    known = {n.node_id for n in list_nodes(store, target) if not n.expired}
    if node_id not in known:
        raise InvalidInputs(f"no live node {node_id!r} on {target.describe()}",
                            hint=f"live nodes: {', '.join(sorted(known)) or 'none'} (`agentshards nodes`)")
    request_drain(store, target, node_id)
