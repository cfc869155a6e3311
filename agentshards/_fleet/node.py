"""``Node``: a long-running member of a fleet spread over machines, sharing one replica prefix with others.

A node is a ``Fleet`` that does not end: every scan (a third of its lease TTL, jittered) it lists the
agents' entries (one LIST of ``manifest/``, a GET only for entries whose ETag changed since the last
scan) and the nodes' leases (one LIST of ``nodes/``), and claims, up to its capacity, agents that are
``queued``, handed back, or owned by a node that is gone (expired after its lease went unrenewed for its
TTL plus margin). Where nodes run is left to whatever starts them (Kubernetes, systemd): there is no
scheduler; which node takes which agent is rendezvous hashing over the live nodes with room (``_pick``).

``stop()`` (SIGTERM in the CLI) or a drain request (``agentshards drain``) ends it gracefully: workers get
SIGTERM and a bounded wait, each agent whose final sync is confirmed is handed back (any node claims it at
once, without waiting for this node's TTL), then Litestream stops and the node's lease is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._base.config import RunConfig, SupervisorConfig
from .._base.errors import AgentShardsError, InvalidInputs, InvalidTarget
from .fleet import Fleet

if TYPE_CHECKING:
    from .._replication.manifest import ManifestEntry
    from .._replication.objectstore import ObjectStore
    from .._replication.replica import ReplicaTarget

log = logging.getLogger("agentshards")


class EntryCache:
    """The manifest as of the last scan: one LIST per scan, a GET only for entries whose ETag changed."""

    def __init__(self, store: ObjectStore, target: ReplicaTarget) -> None:
        self.store, self.target = store, target
        self._entries: dict[str, tuple[str, ManifestEntry]] = {}

    def scan(self) -> list[ManifestEntry]:
        from .._replication.manifest import decode
        from .._replication.objectstore import ObjectNotFound

        listing = self.store.list_etags(self.target.manifest_prefix())
        fresh: dict[str, tuple[str, ManifestEntry]] = {}
        changed = []
        for key, etag in listing.items():
            if not key.endswith(".json"):
                continue
            known = self._entries.get(key)
            if known is not None and known[0] == etag:
                fresh[key] = known
            else:
                changed.append(key)

        def read(key: str) -> None:
            try:
                data, etag = self.store.get_etag(key)
                fresh[key] = (etag, decode(data))
            except ObjectNotFound:
                return
            except (ValueError, TypeError) as exc:
                log.warning("skipping the unreadable manifest entry %s: %s", key, exc)

        if len(changed) <= 2:
            for key in changed:
                read(key)
        else:  # while nodes claim and bring agents up, hundreds change between scans: one GET after the other
            # made a scan take tens of seconds on a loaded store (measured in a take-over), and claims wait for it
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=16, thread_name_prefix="agentshards-scan") as pool:
                list(pool.map(read, changed))
        self._entries = {key: fresh[key] for key in sorted(fresh)}
        return [entry for _etag, entry in self._entries.values()]

    def etag(self, entry: ManifestEntry) -> str | None:
        """The ETag of ``entry`` as this scan read it (None if the scan did not read that very entry)."""
        known = self._entries.get(self.target.manifest_key(entry.agent_id))
        return known[0] if known is not None and known[1] is entry else None


class Node:
    def __init__(self, data_dir: str | os.PathLike[str], replica: str, *, capacity: int = 100,
                 node_id: str | None = None, app_dir: str | os.PathLike[str] | None = None,
                 allow_targets: Sequence[str] = (), lease_ttl_s: float = 30.0,
                 config: SupervisorConfig | None = None, env: Mapping[str, str] | None = None,
                 scan_every_s: float | None = None, run_config: RunConfig | None = None) -> None:
        if capacity < 1:
            raise InvalidInputs(f"capacity must be at least 1, not {capacity}", hint="--capacity N, N >= 1")
        self.capacity = capacity
        self.fleet = Fleet(data_dir, replica, app_dir=app_dir, config=config, lease_ttl_s=lease_ttl_s, env=env,
                           node_id=node_id, run_config=run_config)
        self.fleet._claim_races_expected = True
        self.allow_targets = tuple(allow_targets)
        self.scan_every_s = lease_ttl_s / 3 if scan_every_s is None else scan_every_s
        self._stop = threading.Event()
        self.stopped_by: str | None = None
        self.claimed: list[str] = []  # every agent this node claimed, in order
        self._acting: set[str] = set()  # agents whose cancel or delete is under way here
        self._expiry_due: float | None = None  # when the next owner of agents here may be expired (monotonic)
        self._waiting: dict[str, float] = {}  # claimable agent -> since when this node has seen it claimable

    @property
    def node_id(self) -> str | None:
        return self.fleet.node_id

    def stop(self, reason: str = "asked to stop") -> None:
        """Drain and end ``run`` (from any thread, or a signal handler)."""
        self.stopped_by = self.stopped_by or reason
        self._stop.set()

    def run(self) -> dict[str, Any]:
        """Run until stopped or drained; return ``agent_id -> result or exception`` for the agents that
        ended here. LeaseError when this node lost its lease (it stopped everything by itself first)."""
        from .._core.target_policy import TargetPolicy
        from .._replication.nodes import clear_drain

        fleet = self.fleet
        supervisor = fleet._begin(extra={"capacity": self.capacity})
        claims, replication = fleet._claims, fleet._replication
        assert claims is not None and replication is not None
        from .requests import claimable_with

        claims.admit = claimable_with
        policy = TargetPolicy.of(fleet.app_dir, self.allow_targets)
        cache = EntryCache(replication.store, replication.target)
        log.info("node %s: up on %s with capacity %d", claims.node, replication.target.describe(), self.capacity)
        watchdog = threading.Thread(target=fleet._watch, args=(replication,), daemon=True,
                                    name="agentshards-watchdog")
        watchdog.start()
        fleet._watchdog = watchdog
        next_scan = 0.0
        try:
            while not self._stop.is_set():
                supervisor.tick()
                if time.monotonic() >= next_scan:
                    self._scan(cache, policy)
                    if claims.node in claims.nodes.draining:
                        self.stop("a drain was requested")
                    now = time.monotonic()
                    next_scan = now + self.scan_every_s * random.uniform(0.5, 1.0)  # no stampede
                    if self._expiry_due is not None:  # never sooner than a second: a due time is a hint
                        next_scan = min(next_scan, max(now + 1.0, self._expiry_due + random.uniform(0.1, 1.0)))
                self._stop.wait(fleet.config.tick_s)
            log.info("node %s: draining (%s): handing its agents back", claims.node, self.stopped_by)
            fleet._drain_finals()
            outcomes = {a: fleet._outcome(s) for a, s in supervisor.agents.items() if s.status in _ENDED_HERE}
        finally:
            node = claims.node
            fleet.close()
        if self.stopped_by == "a drain was requested":
            clear_drain(replication.store, replication.target, node)
        return {**outcomes, **fleet._failed}

    def _scan(self, cache: EntryCache, policy: Any) -> None:
        """Claim what this node has room for among the claimable agents."""
        from .._core.target_policy import resolve_stored
        from .._replication.states import QUEUED
        from .requests import claimable_with

        fleet = self.fleet
        claims = fleet._claims
        assert claims is not None and fleet._supervisor is not None
        self._expiry_due = None  # set again below by a scan that gets that far
        try:
            entries = cache.scan()  # before the nodes: see NodeWatch
            claims.nodes.refresh()
        except Exception as exc:  # the store's errors: the lease decides whether this node goes on
            log.warning("node %s: could not scan the prefix (%s: %s); trying again at the next scan", claims.node,
                        type(exc).__name__, exc)
            return
        self._acting &= {e.agent_id for e in entries if e.request is not None and claims.ownership.holds(e.agent_id)}
        for entry in entries:
            if entry.request is not None and claims.ownership.holds(entry.agent_id):
                self._carry_out(entry)
        room = self.capacity - len(claims.ownership.held())
        if room <= 0 or claims.node in claims.nodes.draining:
            return
        running = fleet._supervisor.agents
        candidates = []
        expiry_in: float | None = None  # the soonest an owner of agents not claimable yet may be expired
        for entry in entries:
            if not claimable_with(entry) or claims.ownership.holds(entry.agent_id):
                continue
            if entry.agent_id in running and entry.request is None and entry.status != QUEUED:
                continue  # it ended here (launched again only for an operator's request, or submitted anew)
            owner = entry.node
            alive = (owner is not None and owner != claims.node and not claims.nodes.gone(owner)
                     and ((left := claims.nodes.overdue(owner)) > 0 or not claims.nodes.expire(owner)))
            if not alive:
                candidates.append(entry)
            elif owner is not None and left > 0:
                expiry_in = left if expiry_in is None else min(expiry_in, left)
        # a node that stopped renewing is expired at the scan right after its TTL plus margin, not up to a
        # scan later: its agents have waited long enough (live nodes renew well before: no extra scans)
        self._expiry_due = None if expiry_in is None else time.monotonic() + expiry_in
        random.shuffle(candidates)  # each node brings its agents up in an order of its own
        from .._replication.ownership import Record

        take = self._pick(entries, candidates)[:room]
        for entry in take:  # a claim writes on the version scanned (If-Match): no GET of it again
            etag = cache.etag(entry)
            if etag is not None:
                claims.scanned[entry.agent_id] = Record(entry, etag)
        batches: dict[str, dict[str, Any]] = {}
        for entry in take:
            try:
                resolve_stored(entry.target, policy, entry.agent_id)
                inputs = json.loads(entry.inputs_json or "null")
                if not isinstance(inputs, dict):
                    raise InvalidInputs("its manifest entry holds no inputs", agent_id=entry.agent_id,
                                        hint="submit it again with its inputs")
            except (InvalidTarget, InvalidInputs, ValueError) as exc:
                log.error("node %s: not claiming agent %s: %s", claims.node, entry.agent_id, exc)
                continue
            batches.setdefault(entry.target, {})[entry.agent_id] = inputs
        requested = {e.agent_id: e for e in take if e.request is not None}
        try:
            for target, agents in batches.items():
                _launch(fleet, target, agents)
                self.claimed.extend(a for a in agents if claims.ownership.holds(a))
                for agent_id in agents:  # before the next tick starts them: a cancel or a retry is carried out now
                    if agent_id in requested and claims.ownership.holds(agent_id):
                        self._carry_out(requested[agent_id])
            if batches:
                log.info("node %s: claimed %d agents (%d held)", claims.node,
                         sum(len(b) for b in batches.values()), len(claims.ownership.held()))
        finally:
            claims.scanned.clear()  # a version not claimed now is stale at the next scan

    def _pick(self, entries: Sequence[ManifestEntry], candidates: list[ManifestEntry]) -> list[ManifestEntry]:
        """The candidates this node claims now, in order: first those that hash to it among the live nodes
        with room (rendezvous hashing: capacity from their leases, agents owned from the entries just
        scanned), then any other that has waited two scans for the node it hashes to (full, slow or gone).
        Nodes then split a submission, or a lost node's agents, at once and without racing for the same
        agent, where the first node to scan used to take all it had room for."""
        import hashlib

        from .._replication.states import is_unfinished

        claims = self.fleet._claims
        assert claims is not None
        owned: dict[str, int] = {}
        for entry in entries:
            if entry.node is not None and is_unfinished(entry.status):
                owned[entry.node] = owned.get(entry.node, 0) + 1
        peers = [claims.node]
        for node in sorted(claims.nodes.present - {claims.node} - claims.nodes.draining):
            if claims.nodes.gone(node):
                continue
            try:
                info = claims.nodes.info(node)  # one GET per node, the first time it is seen
            except Exception as exc:  # the store's errors: placed as if that node were full, for this scan
                log.warning("node %s: could not read the lease of node %s: %s", claims.node, node, exc)
                continue
            # a lease without a capacity is a Fleet, run or recover, which claims only what it was asked for
            if info is not None and info.capacity is not None and owned.get(node, 0) < info.capacity:
                peers.append(node)
        now = time.monotonic()
        self._waiting = {e.agent_id: self._waiting.get(e.agent_id, now) for e in candidates}

        mine, left = [], []
        for entry in candidates:
            placed = max(peers, key=lambda node: hashlib.blake2b(f"{entry.agent_id}/{node}".encode(),
                                                                 digest_size=8).digest())
            if placed == claims.node:
                mine.append(entry)
            elif now - self._waiting[entry.agent_id] >= 2 * self.scan_every_s:
                left.append(entry)
        return mine + left


    def _carry_out(self, entry: ManifestEntry) -> None:
        """An operator's request for an agent this node owns (``requests.py``): cancel or delete stops it here;
        a retry reopens its failed run before its worker starts. Done once: the request leaves the entry when
        it is settled (a published end, a hand-back, or the retry's own write below)."""
        from .._replication.manifest import CANCEL, DELETE, RETRY

        fleet, agent_id, claims = self.fleet, entry.agent_id, self.fleet._claims
        assert claims is not None
        reason = entry.request_reason or f"{entry.request} requested by an operator"
        try:
            if entry.request in (CANCEL, DELETE):
                if agent_id not in self._acting:
                    self._acting.add(agent_id)
                    log.warning("node %s: agent %s: %s", claims.node, agent_id, reason)
                    if not fleet.cancel(agent_id, reason, delete=entry.request == DELETE):
                        claims.ownership.update(agent_id, request=None, request_reason=None)  # it had ended
            elif entry.request == RETRY:
                reopen_failed(fleet, agent_id)
                claims.ownership.update(agent_id, request=None, request_reason=None)
        except Exception as exc:  # the store's errors included: the next scan tries again, the node goes on
            self._acting.discard(agent_id)
            log.error("node %s: agent %s: could not carry out the operator's %s: %s", claims.node, agent_id,
                      entry.request, exc)


def reopen_failed(fleet: Fleet, agent_id: str) -> None:
    """Reopen the agent's failed run (its worker has not started: the supervisor starts it at its next tick),
    so it resumes from its last completed step, as ``retry_agent`` does on one machine."""
    from .._core.journal import Journal
    from .._core.shard import open_shard
    from .._replication.states import FAILED

    journal = Journal(open_shard(fleet.data_dir, agent_id, fleet.run_config.shard, create=False), agent_id)
    try:
        runs = journal.runs()
        if runs and runs[-1].status == FAILED:
            journal.reopen(runs[-1].id)
    finally:
        journal.close()


def _launch(fleet: Fleet, target: str, agents: dict[str, Any]) -> None:
    """Launch what was claimable; an agent another node was faster to claim is simply not this node's (not an
    outcome); any other refusal is that agent's outcome here."""
    from .._base.errors import AgentOwned

    try:
        fleet.launch(target, agents, again=True)
    except AgentShardsError as exc:
        log.error("node: could not launch %d agents of %s: %s", len(agents), target, exc)
        return
    for agent_id in [a for a, e in fleet._failed.items() if a in agents and isinstance(e, AgentOwned)]:
        del fleet._failed[agent_id]


_ENDED_HERE = ("succeeded", "failed", "budget_exceeded", "gave_up")


def submit(target: str, agents: Mapping[str, Mapping[str, Any]], replica: str, *,
           env: Mapping[str, str] | None = None) -> dict[str, str | AgentShardsError]:
    """Queue agents in the prefix for nodes to claim: ``agent_id -> "queued"``, or the error that refused
    that agent (an id that already exists is refused, never queued over the first)."""
    from .._base.errors import InvalidTarget
    from .._core import codec as _codec
    from .._core.shard import validate_agent_id
    from .._replication.manifest import ManifestEntry
    from .._replication.ownership import Ownership
    from .._replication.states import QUEUED
    from .run import check_replica

    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise InvalidTarget(f"target {target!r} is not module:function", hint="e.g. myproject.agents:researcher")
    env = dict(os.environ if env is None else env)
    replica_target, store = check_replica(replica, env)
    from .._replication.lease import probe_conditional_writes

    probe_conditional_writes(store, replica_target)
    ownership = Ownership(store, replica_target, node="submit", dir_id="")
    results: dict[str, str | AgentShardsError] = {}
    for agent_id, inputs in agents.items():
        try:
            validate_agent_id(agent_id)
            text = _codec.canonical(dict(inputs))
            entry = ManifestEntry(agent_id=agent_id, status=QUEUED, target=target, input_digest=_codec.digest(text),
                                  run_id="", code_fingerprint=None, steps=0, updated_at=time.time(), inputs_json=text)
            if ownership.create(entry, owned=False) is None:
                raise InvalidInputs("an agent with this id already exists in the replica", agent_id=agent_id,
                                    hint="agent ids are unique per prefix; `agentshards fleet` lists them")
            results[agent_id] = QUEUED
        except AgentShardsError as exc:
            results[agent_id] = exc
        except (TypeError, ValueError) as exc:
            results[agent_id] = InvalidInputs(f"inputs are not JSON-able: {exc}", agent_id=agent_id,
                                              hint="pass str/int/float/bool/None/list/dict inputs")
    return results

