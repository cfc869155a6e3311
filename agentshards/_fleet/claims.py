"""``Claims``: one node's hold on the agents it runs from a replica prefix (its lease, its ownership records).

Every writer of a prefix is a node: a ``Fleet``, a ``run_agent`` with a replica, a ``recover``, an
``agentshards node``. Each takes a lease of its own (``nodes/<node_id>.json``) and claims each agent by a
conditional write on its manifest entry before it writes anything for it; see ``ownership.py`` and
``docs/ownership.md``. This module is the sequence both the fleet and ``run_agent`` follow:

1. ``claim``: create the entry, or take it (one generation up) from nobody or from a node that is gone;
   a live owner refuses it (``AgentOwned``), or with ``take_over`` is watched for its TTL plus margin.
2. ``bring_up``: restore the live generation unless this data dir ran the agent last (its local shard is
   then the newest copy there is), verified.
3. ``go_live``: register the shard with Litestream on the new generation's path, wait until that
   generation holds a snapshot, then name it live in the entry. Only then does the agent run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base.errors import AgentOwned, LeaseError, ReplicationError
from .._core.shard import shard_path

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from .._base.config import LitestreamConfig
    from .._replication.lease_keeper import LeaseKeeper
    from .._replication.manifest import ManifestEntry
    from .._replication.nodes import NodeWatch
    from .._replication.objectstore import ObjectStore
    from .._replication.ownership import Ownership, Record
    from .._replication.replica import ReplicaTarget
    from .._replication.replication import Replication

log = logging.getLogger("agentshards")

GO_LIVE_TIMEOUT_S = 60.0
_CLAIM_FIELDS = ("status", "target", "input_digest", "code_fingerprint", "inputs_json")
"""What a claim may change in an entry besides ownership: its run id and step count stay as last published."""


def data_dir_id(data_dir: Path) -> str:
    """A random id kept in the data dir: names it in ownership records (a node may trust its local shard
    only when the record says this very data dir ran the agent last)."""
    path = Path(data_dir) / ".fleet" / "dir-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(uuid.uuid4().hex + "\n")
        return path.read_text().strip()


class Claims:
    def __init__(self, keeper: LeaseKeeper, ownership: Ownership, nodes: NodeWatch, *, take_over: bool) -> None:
        self.keeper, self.ownership, self.nodes, self.take_over = keeper, ownership, nodes, take_over
        # A node claims only what it may take by itself (``requests.claimable_with``), judged on the very version
        # the claim's If-Match writes on: an operator may have cancelled it since the scan. None: a launch,
        # recover or run_agent asked for these agents by name.
        self.admit: Callable[[ManifestEntry], bool] | None = None
        self.before: dict[str, Record | None] = {}  # agent -> its entry before this node claimed it
        # agent -> its entry as a node's scan just read it: the claim writes on that version (its If-Match
        # fails if the entry changed since), so it need not be read again
        self.scanned: dict[str, Record] = {}
        self._collecting = threading.Lock()
        self._collector: ThreadPoolExecutor | None = None  # collect_generations, off the bring-up's path
        self._collections: list[Future[None]] = []

    @property
    def node(self) -> str:
        return self.ownership.node

    @classmethod
    def open(cls, data_dir: Path, target: ReplicaTarget, store: ObjectStore, *, ttl_s: float, take_over: bool,
             node_id: str | None = None, extra: Mapping[str, object] | None = None) -> Claims:
        """Refuse a live node of the layout before nodes, then take this node's lease and keep it."""
        import socket

        from .._replication.lease import Lease, LeaseConfig, probe_conditional_writes
        from .._replication.lease_keeper import LeaseKeeper
        from .._replication.nodes import NodeWatch, new_node_id, validate_node_id
        from .._replication.ownership import Ownership

        probe_conditional_writes(store, target)
        _retire_prefix_lease(store, target, LeaseConfig(ttl_s, take_over=take_over))
        if target.kind == "file":
            _refuse_another_host(store, target, socket.gethostname())
        node = validate_node_id(node_id) if node_id is not None else new_node_id()
        config = LeaseConfig(ttl_s)

        keeper = LeaseKeeper(Lease(store, target, config, owner=node, key=target.node_key(node),
                                   extra={"host": socket.gethostname(), **(extra or {})}))
        keeper.acquire()
        return cls(keeper, Ownership(store, target, node, data_dir_id(data_dir)),
                   NodeWatch(store, target, default_terms=(config.ttl_s, config.margin)), take_over=take_over)

    # -- 1. claim ------------------------------------------------------------------------------------------

    def claim(self, agent_id: str, fields: Mapping[str, Any]) -> tuple[Record | None, Record]:
        """Own ``agent_id``; return (its entry before, this node's entry). ``fields``: the manifest fields of
        the launch (status, target, inputs...). The store's own errors become a ReplicationError naming the
        agent: it is not started (a node that cannot write its entry cannot fence it)."""
        from .._base.errors import AgentShardsError

        try:
            return self._claim(agent_id, fields)
        except AgentShardsError:
            raise
        except Exception as exc:  # botocore's and OSError: one error root for callers
            raise ReplicationError(f"could not write its manifest entry to claim it: {type(exc).__name__}: {exc}",
                                   agent_id=agent_id, hint="a node writes an agent only once its manifest entry "
                                   "names it; check the replica (endpoint, credentials, network) and run it "
                                   "again") from exc

    def _claim(self, agent_id: str, fields: Mapping[str, Any]) -> tuple[Record | None, Record]:
        from .._base.errors import InvalidInputs
        from .._replication.manifest import DELETE, ManifestEntry
        from .._replication.ownership import refuse_owned

        if self.keeper.lost is not None:
            raise self.keeper.lost
        for attempt in range(3):
            scanned = self.scanned.pop(agent_id, None) if attempt == 0 else None
            before = scanned if scanned is not None else self.ownership.read(agent_id)
            if before is None:
                created = self.ownership.create(ManifestEntry(agent_id=agent_id, **fields))
                if created is not None:
                    return None, created
                continue  # created by another node at the same moment: judge its entry
            if before.entry.request == DELETE:
                raise InvalidInputs("an operator is deleting it", agent_id=agent_id,
                                    hint="`agentshards delete --fleet` finishes the deletion")
            if self.admit is not None and not self.admit(before.entry):
                raise AgentOwned(f"it is no longer claimable ({before.entry.status})", agent_id=agent_id,
                                 hint="its entry changed since this node scanned it")
            owner = before.entry.node
            if owner is not None and owner != self.node:
                self.nodes.refresh(max_age_s=2.0)
                if not self.nodes.gone(owner):
                    if not self.take_over:
                        raise refuse_owned(before, "its lease is live")
                    if self.live_after_wait({owner}):
                        raise AgentOwned(f"node {owner} renewed its lease while this node watched it: it is alive",
                                         node=owner, agent_id=agent_id,
                                         hint="stop that node first (or `agentshards drain` it), then try again")
            claimed = self.ownership.claim(before, **{k: v for k, v in fields.items() if k in _CLAIM_FIELDS})
            if claimed is not None:
                self.before[agent_id] = before
                return before, claimed
        raise AgentOwned("other nodes kept claiming it while this node tried", agent_id=agent_id,
                         hint="run each agent from one place at a time")

    def live_after_wait(self, owners: set[str]) -> set[str]:
        """Watch the ``owners``' leases for their TTL plus margin (together: one wait for all); expire those
        nobody renewed; return the ones that renewed (alive)."""
        waiting = {o for o in owners if not self.nodes.gone(o)}
        if waiting:
            log.warning("nodes %s own agents asked for here; watching their leases for up to %.1fs, taking their "
                        "agents only if nobody renews them", ", ".join(sorted(waiting)),
                        max(self.nodes.overdue(o) for o in waiting))
        alive: set[str] = set()
        for owner in waiting:
            self.nodes.renewed_since_watch(owner)  # notes the ETag each wait starts from
        while waiting:
            left = max(self.nodes.overdue(o) for o in waiting)
            if left > 0:
                time.sleep(min(left, 1.0))
                self.nodes.refresh()
            for owner in sorted(waiting):
                if self.nodes.gone(owner) or (self.nodes.overdue(owner) <= 0 and self.nodes.expire(owner)):
                    waiting.discard(owner)
                elif self.nodes.renewed_since_watch(owner):
                    alive.add(owner)
                    waiting.discard(owner)
        return alive

    def claim_all(self, entries: list[Any]) -> dict[str, Exception]:
        """Claim the agents of ``entries`` (manifest entries) in parallel; return the errors of those this
        node could not claim (owned by a live node: AgentOwned; the store's errors), the others are owned."""
        from concurrent.futures import ThreadPoolExecutor

        from .._replication.ownership import Record, refuse_owned
        from .._replication.states import RUNNING

        self.nodes.refresh()
        owners = {e.node for e in entries if e.node is not None and e.node != self.node}
        live = {o for o in owners if not self.nodes.gone(o)}
        if live and self.take_over:
            live = self.live_after_wait(live)
        errors: dict[str, Exception] = {}
        todo = []
        for entry in entries:
            if entry.node in live:
                errors[entry.agent_id] = refuse_owned(Record(entry, ""), "its lease is live")
            else:
                todo.append(entry)

        def one(entry: Any) -> None:
            try:
                self.claim(entry.agent_id, {"status": RUNNING})
            except Exception as exc:  # this agent's outcome; the others are claimed
                errors[entry.agent_id] = exc

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, todo))
        return errors

    # -- 2. bring up ---------------------------------------------------------------------------------------

    def needs_restore(self, data_dir: Path, agent_id: str, before: Record | None) -> bool:
        """Whether the agent's state must come from its replica rather than this data dir's file."""
        from .._replication.states import QUEUED

        if before is None or before.entry.status == QUEUED:
            return False  # a new agent (or one submitted and never run): whatever is local is all there is
        local = shard_path(data_dir, agent_id).exists()
        if not local:
            return True
        # trusted only when this data dir ran it last (or the entry predates generations and says nothing)
        return before.entry.dir_id is not None and before.entry.dir_id != self.ownership.dir_id

    def bring_up(self, data_dir: Path, agent_id: str, before: Record | None, target: ReplicaTarget,
                 store: ObjectStore, litestream: LitestreamConfig, env: Mapping[str, str], *,
                 agent_locked: bool = False) -> None:
        """Restore the live generation over any local file when the local file cannot be trusted. The
        caller owns the data dir. NoReplica (nothing ever reached the replica) leaves the agent to start
        from its inputs."""
        from .._base.errors import NoReplica
        from .._replication.restore import _restore_one

        if before is None or not self.needs_restore(data_dir, agent_id, before):
            return
        try:
            _restore_one(agent_id, data_dir, target, store, litestream, env, None, True, None,
                         generation=before.entry.live, agent_locked=agent_locked)
        except NoReplica:
            if shard_path(data_dir, agent_id).exists():
                raise ReplicationError(
                    f"its live generation {before.entry.live} holds nothing, and the local shard was last run "
                    "from another data dir", agent_id=agent_id,
                    hint="move the local shard away to start it from its inputs, or restore it by hand") from None
            log.warning("agent %s: nothing of it reached the replica; it starts from its inputs", agent_id)

    # -- 3. go live ----------------------------------------------------------------------------------------

    def go_live(self, agent_id: str, replication: Replication, phases: dict[str, float] | None = None) -> None:
        """Replicate to this node's generation and make it the live one once it holds a snapshot.
        ``phases``: filled with the seconds each step took (a launch reports them)."""
        phases = {} if phases is None else phases
        generation = self.ownership.generation(agent_id)
        started = time.monotonic()
        replication.register(agent_id, generation)
        registered = time.monotonic()
        replication.confirm(agent_id, GO_LIVE_TIMEOUT_S)
        synced = time.monotonic()
        self.ownership.update(agent_id, live=generation)
        phases.update(register=registered - started, first_sync=synced - registered,
                      live_write=time.monotonic() - synced)
        # older generations are garbage now, collected off the agent's way (a LIST and DELETEs: a second per
        with self._collecting:  # agent on a loaded store, measured in a take-over, before it ran here)
            if self._collector is None:
                from concurrent.futures import ThreadPoolExecutor

                self._collector = ThreadPoolExecutor(max_workers=2, thread_name_prefix="agentshards-collect")
            self._collections = [f for f in self._collections if not f.done()]
            self._collections.append(self._collector.submit(self._collect, replication, agent_id, generation))

    def _collect(self, replication: Replication, agent_id: str, generation: int) -> None:
        """Collect the generations below ``generation`` only while that generation is still the agent's newest:
        queued for a while, the agent may meanwhile have been deleted and submitted anew (generation 1 again),
        and then everything below ``generation`` is the new agent's replica."""
        held = self.ownership.entry(agent_id)
        if held is None or held.generation != generation:
            try:
                record = self.ownership.read(agent_id)  # handed back or ended here: the record says
            except Exception as exc:  # the store's errors: garbage stays, nothing is lost
                log.warning("agent %s: not collecting its older generations: %s", agent_id, exc)
                return
            if record is None or record.entry.generation != generation:
                return
        collect_generations(replication.store, replication.target, agent_id, generation)

    def release(self, drain_s: float = 30.0) -> None:
        """Give the queued collections up to ``drain_s`` (an agent that ends here is not claimed again, so
        what is not collected now stays), then end this node's lease."""
        from concurrent.futures import wait

        with self._collecting:
            collector, self._collector = self._collector, None
            pending, self._collections = self._collections, []
        if collector is not None:
            wait(pending, timeout=drain_s)
            collector.shutdown(wait=True, cancel_futures=True)
        self.keeper.release()


def collect_generations(store: ObjectStore, target: ReplicaTarget, agent_id: str, live: int) -> int:
    """Delete the objects of the agent's generations older than ``live`` (no restore reads them once ``live``
    holds a snapshot); return how many. Best effort: what is left (a failed DELETE, a stale node's upload
    landing later) goes at the agent's next claim."""
    import re

    root = target.agent_key(agent_id) + "/"
    numbered = re.compile(r"g([0-9]+)/")
    try:
        old = [key for key in store.list(root)
               if (int(found.group(1)) if (found := numbered.match(key, len(root))) else 0) < live]
        store.delete_many(old)
        return len(old)
    except Exception as exc:  # the store's errors: garbage stays, nothing is lost
        log.warning("agent %s: could not delete the objects of its older generations: %s", agent_id, exc)
        return 0


def _retire_prefix_lease(store: ObjectStore, target: ReplicaTarget, config: Any) -> None:
    """The layout before nodes kept one lease for the whole prefix (``lease.json``). While it is live, an
    older node runs every agent of the prefix: refused; with ``take_over`` it is watched for its TTL plus
    margin, then removed."""
    from .._replication.lease import Lease
    from .._replication.objectstore import ObjectNotFound

    try:
        store.get(target.lease_key())
    except ObjectNotFound:
        return
    lease = Lease(store, target, config)
    try:
        lease.acquire()
    except LeaseError as exc:
        raise LeaseError(f"{exc.message} (a lease of the layout before nodes: that node runs every agent of the "
                         "prefix)", hint="stop that node; or, if it is gone, pass --take-over once: the old "
                                         "lease is then watched for its TTL plus margin and removed") from None
    lease.release()
    log.warning("%s: removed the prefix lease of the layout before nodes; agents are owned one by one from now on",
                target.describe())


def _refuse_another_host(store: ObjectStore, target: ReplicaTarget, host: str) -> None:
    """A directory replica's conditional writes are file locks, which hold on one host only (a network file
    system does not carry them reliably): nodes of a directory replica must all run on one host."""
    from .._base.errors import InvalidReplica
    from .._replication.nodes import list_nodes

    others = sorted({n.host for n in list_nodes(store, target) if not n.expired and n.host and n.host != host})
    if others:
        raise InvalidReplica(f"nodes on other hosts ({', '.join(others)}) use the directory replica "
                             f"{target.describe()}",
                             hint="a directory replica fences with file locks, which work on one host only; nodes on "
                                  "several machines need an S3 replica (s3://bucket/prefix)")
