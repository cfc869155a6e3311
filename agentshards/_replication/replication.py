"""Replication as agents see it: the durability barrier, replica health and the manifest writer.

``confirm`` is what a ``replicated`` step waits for: Litestream reports the replica at or past the local
position (``sync -wait``), *and* the replica holds a snapshot (an LTX file starting at transaction 1).
The second check catches what Litestream does not: after a bucket is wiped it keeps uploading
incremental files that cannot be restored. Then Litestream is restarted (it snapshots at start) and the
check repeated; a step is never confirmed against a replica that could not be restored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import apsw

from .._base.config import ShardConfig
from .._base.errors import AgentShardsError, ReplicationError
from .._core.shard import shard_path
from .._core.sqlite import open_connection
from .._core.wal import unpublished_frames
from .litestream import Litestream, SyncResult
from .manifest import ManifestEntry, write_manifest
from .objectstore import ObjectStore
from .replica import ReplicaTarget

log = logging.getLogger("agentshards")

SNAPSHOT_PREFIX = "0000000000000001-"
_BEHIND_PAUSE_S = 0.01  # between syncs that found the replica behind: a concurrent upload is under way


@dataclass(frozen=True)
class AgentReplicationStatus:
    """One agent's replication as seen from outside Litestream (its logs do not report silent failures)."""

    agent_id: str
    state: str                     # Litestream's own word for the shard ("replicating", ...) or "unregistered"
    last_sync_at: float | None     # when Litestream last finished a sync of the shard (epoch seconds)
    local_commit_at: float | None  # when the shard's WAL was last written
    lag_s: float                   # local writes not yet synced for this long; 0 when caught up
    snapshot: bool                 # the replica holds a snapshot, i.e. it can be restored

    @property
    def healthy(self) -> bool:
        return self.state == "replicating" and self.snapshot and self.lag_s < 60


class Replication:
    def __init__(self, litestream: Litestream, store: ObjectStore, target: ReplicaTarget) -> None:
        self.health_ttl_s = litestream.config.health_check_interval_s
        self.litestream = litestream
        self.store = store
        self.target = target
        self._healthy_at: dict[str, float] = {}
        # Held by whatever stops or starts Litestream (a confirm's repair, the watchdog's restart), so that
        # one never restarts it in the middle of another (a repair resets a shard while it is stopped).
        # Not held while a confirm waits for its sync: confirms of different agents run side by side (a
        # sync cut short by a restart fails that one confirm, which a resumed step waits for again).
        self._lock = threading.RLock()
        self._stall_checked_at = self._stall_restarted_at = time.monotonic()
        self._answered_at = time.monotonic()  # the control socket's last answer (or Litestream's start)
        self._slow_logged_at = -1e9
        self._pending_since: dict[str, float] = {}  # agent -> mtime of the oldest write seen unsynced
        self.halted: AgentShardsError | None = None  # why this node stopped writing to the replica
        # (epoch seconds, every shard's replication) from the watchdog's last look: what a fleet publishes
        # for `status` and the dashboard, so they need no control socket of their own
        self.last_status: tuple[float, list[AgentReplicationStatus]] | None = None
        # agent -> the generation this node replicates it to (set before it registers; see ownership.py)
        self.generations: dict[str, int] = {}

    def halt(self, error: AgentShardsError) -> None:
        """Stop writing to the replica now, from any thread (a lease fence): Litestream is killed, and no
        step is confirmed nor manifest written from here on (``error`` says why)."""
        self.halted = error
        self.litestream.halt()

    def register(self, agent_id: str, generation: int = 0) -> None:
        self.generations[agent_id] = generation
        self.litestream.register(agent_id, generation)

    def _keys(self, agent_id: str) -> list[str]:
        generation = self.generations.get(agent_id, 0)
        keys = self.store.list(self.target.agent_key(agent_id, generation) + "/")
        return self.target.generation_keys(keys, agent_id, generation)

    def snapshot_exists(self, agent_id: str) -> bool:
        keys = self._keys(agent_id)
        return any(key.rsplit("/", 1)[-1].startswith(SNAPSHOT_PREFIX) for key in keys)

    def confirm(self, agent_id: str, timeout_s: float) -> None:
        """Return once the replica holds everything committed so far; ReplicationError on timeout."""
        if self.halted is not None:
            raise self.halted
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self.litestream.ensure_running()
        # The wait itself runs outside the lock: a fleet's workers confirm many agents' steps at once, and
        # one at a time they queued behind each other (measured: p99 12.5 s for 100 agents' first steps).
        try:
            self._synced(agent_id, deadline)
        except ReplicationError:
            if self.halted is not None:  # fenced while it waited: that is why, not the sync
                raise self.halted from None
            self.restart_if_stalled(force_check=True)  # a hung S3 connection: the next attempt can pass
            raise
        checked = self._healthy_at.get(agent_id)
        if checked is not None and time.monotonic() - checked < self.health_ttl_s:
            return
        if not self.snapshot_exists(agent_id):
            with self._lock:  # a repair stops and starts Litestream: not in the middle of another one
                log.warning("replica of agent %s at %s has no snapshot (bucket wiped or reset?); resetting its "
                            "local litestream state and restarting to upload one", agent_id, self.target.describe())
                self.repair(agent_id)
                self._synced(agent_id, deadline)
                if not self.snapshot_exists(agent_id):
                    raise ReplicationError(
                        f"the replica at {self.target.describe()} still has no snapshot after a repair",
                        agent_id=agent_id, hint="check the bucket and litestream.log in the data dir")
        self._healthy_at[agent_id] = time.monotonic()

    def _synced(self, agent_id: str, deadline: float) -> None:
        """Sync until the replica holds the shard's position, within the deadline.

        A sync can answer "replica behind" when Litestream's own monitor synced the shard a moment before
        and its upload is still under way (measured: 13 of 100 agents' steps in a busy fleet): asked again,
        it waits for that upload too. Only a replica still behind at the deadline fails the confirmation."""
        behind: SyncResult | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and behind is not None:  # what the last answer said, not only that time ran out
                raise ReplicationError(f"replica at txid {behind.replicated_txid}, local at {behind.txid}",
                                       agent_id=agent_id, hint="the replica is behind; see litestream.log")
            if remaining <= 0:
                raise ReplicationError("timed out waiting for the replica", agent_id=agent_id,
                                       hint="is the replica reachable? the step is recorded locally")
            result = self.litestream.sync(agent_id, remaining)
            if result.replicated_txid >= result.txid:
                return
            behind = result
            time.sleep(max(0.0, min(_BEHIND_PAUSE_S, deadline - time.monotonic())))

    def repair(self, agent_id: str) -> None:
        """Replace a replica that has no snapshot with a fresh one.

        Without a snapshot the incremental files left under the agent's prefix cannot be restored, and a
        Litestream that sees them resumes from them ("database behind replica") instead of snapshotting.
        So: stop Litestream, delete those unusable files, drop its local state for the shard, start again.
        """
        self.litestream.stop()
        try:
            self.store.delete_many(self._keys(agent_id))
            self.litestream.reset(agent_id)
        finally:
            self.litestream.start()
        self._healthy_at.clear()

    def adopt_torn_commit(self, agent_id: str, shard: ShardConfig) -> int:
        """After a writer of the shard was killed: make a commit it wrote but never published count.

        A worker killed between appending a commit to the WAL and publishing it in the wal-index leaves a
        commit Litestream may already have shipped and the next writer would overwrite (``_core/wal.py``
        says what that does to the replica). SQLite keeps such a commit when it rebuilds the index, and it
        rebuilds it when a connection opens a shard nobody else has open: so Litestream lets go of the
        shard (after its final sync of it), one connection opens and reads it, and Litestream takes it
        back. Returns how many frames were adopted (0: nothing torn, nothing done).
        """
        path = shard_path(self.litestream.data_dir, agent_id)
        torn = unpublished_frames(path)
        if not torn:
            return 0
        hint = "the agent is not restarted here; `agentshards recover` (or another node) takes it"
        with self._lock:  # not in the middle of a repair or a restart
            try:
                self.litestream.unregister(agent_id)
            except (OSError, ReplicationError) as exc:
                raise ReplicationError(f"a killed worker left a commit torn, and Litestream did not let go of the "
                                       f"shard: {exc}", agent_id=agent_id, hint=hint) from exc
            try:
                conn = open_connection(path, shard, create=False)
                try:
                    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # the first read rebuilds
                finally:
                    conn.close()
            except apsw.Error as exc:
                raise ReplicationError(f"could not open the shard to keep a torn commit: {exc}", agent_id=agent_id,
                                       hint=hint) from exc
            finally:
                try:
                    self.litestream.register(agent_id, self.generations.get(agent_id, 0))
                except (OSError, ReplicationError) as exc:
                    raise ReplicationError(f"Litestream did not take the shard back after a torn commit: {exc}",
                                           agent_id=agent_id, hint=hint) from exc
        left = unpublished_frames(path)
        if left:
            raise ReplicationError(
                f"a killed worker left {left} WAL frames of a commit unpublished, and they could not be adopted",
                agent_id=agent_id, hint="another process has the shard open (a dashboard or status reading it?); "
                                        "the agent is not restarted here, so the replica cannot diverge: "
                                        "`agentshards recover` takes it")
        log.warning("agent %s: its worker was killed in the middle of a commit; the commit (%d WAL frames) was "
                    "kept, as SQLite keeps it after a crash, so the replica and the shard agree", agent_id, torn)
        return torn

    def restart_if_stalled(self, *, force_check: bool = False) -> bool:
        """The watchdog: restart Litestream when some shard's local writes stay unsynced too long.

        Litestream's S3 client has a 24 h timeout, so a connection that accepts and never answers stalls
        replication while Litestream keeps reporting "replicating" (measured). Nothing in its logs says
        so; the lag seen from outside does. Checked at most every few seconds (one control-socket call and
        one stat per shard) and a restart at most once per ``stall_timeout_s``, so an S3 outage costs
        one restart per interval, not a restart loop.
        """
        if self.halted is not None:
            return False
        now = time.monotonic()
        stall = self.litestream.config.stall_timeout_s
        if not force_check and now - self._stall_checked_at < min(5.0, stall / 4):
            return False
        self._stall_checked_at = now
        cooling = now - self._stall_restarted_at < stall  # a restart at most once per stall_timeout_s
        try:
            statuses = self.status(snapshots=False, timeout_s=min(10.0, max(1.0, stall / 6)))
        except (OSError, ReplicationError) as exc:
            # a stuck Litestream can stop answering its control socket too (measured: /list timed out
            # during a hung upload). An overloaded one answers late as well (measured at 1,000 shards on
            # 2 cores), and restarting it there re-reads every shard and makes things worse: so silence
            # counts as a stall only after stall_timeout_s, like unsynced writes do.
            silent = now - self._answered_at
            if cooling or silent < stall:
                return False
            reason = f"its control socket has not answered for {silent:.0f} s ({exc})"
        else:
            self._answered_at = now
            self.last_status = (time.time(), statuses)
            if cooling:
                return False
            stuck = self._stalled(statuses, stall)
            if stuck is None:
                return False
            reason = stuck
        self._stall_restarted_at = self._answered_at = now
        try:
            with self._lock:  # not in the middle of a confirm's repair; status() above ran outside it
                self.litestream.restart(reason)
        except (OSError, ReplicationError) as exc:  # the next health check starts it again
            log.warning("could not restart litestream for %s: %s", self.litestream.data_dir, exc)
            return False
        return True

    def _stalled(self, statuses: list[AgentReplicationStatus], stall: float) -> str | None:
        """Why Litestream counts as stuck, or None. Slow is not stuck: on an overloaded machine every shard
        lags but syncs still complete, and a restart (re-registering and re-reading every shard) would only
        add load. Stuck is: no shard synced at all for ``stall`` seconds while writes wait, or one shard
        waiting ten times longer than the typical waiting shard (one upload hung among many healthy ones).
        """
        waiting = sorted((s for s in statuses if s.lag_s > 0), key=lambda s: s.lag_s)
        if not waiting or waiting[-1].lag_s <= stall:
            return None
        worst, typical = waiting[-1], waiting[len(waiting) // 2].lag_s
        newest_sync = max((s.last_sync_at or 0.0) for s in statuses)
        lagging = sum(s.lag_s > stall for s in waiting)
        detail = (f"{lagging} shard(s) with writes unsynced for more than {stall:.0f}s "
                  f"(agent {worst.agent_id}: {worst.lag_s:.0f}s)")
        if time.time() - newest_sync > stall:
            return f"{detail}, and no shard synced for {time.time() - newest_sync:.0f}s: a stuck S3 connection?"
        if worst.lag_s > 10 * typical:
            return f"{detail}, ten times the typical wait of {typical:.1f}s: one stuck upload?"
        if time.monotonic() - self._slow_logged_at > 300:
            self._slow_logged_at = time.monotonic()
            log.warning("replication is behind: %s, typical wait %.1fs; Litestream is still syncing (an "
                        "overloaded machine or a slow S3?), so it is not restarted", detail, typical)
        return None

    def status(self, *, snapshots: bool = True, timeout_s: float = 10.0) -> list[AgentReplicationStatus]:
        """Per registered agent: Litestream's state, last sync, lag behind local writes, snapshot present
        (one LIST per agent; ``snapshots=False`` skips it and reports ``snapshot=False``)."""
        listed = {Path(db["path"]).stem: db for db in self.litestream.databases(timeout_s)}
        out = []
        for agent_id in self.litestream.registered:
            db = listed.get(agent_id, {})
            synced = _epoch(db.get("last_sync_at"))
            wal = self.litestream.data_dir / f"{agent_id}.db-wal"
            try:
                local: float | None = wal.stat().st_mtime
            except FileNotFoundError:
                local = None
            lag = self._lag(agent_id, synced, local)
            out.append(AgentReplicationStatus(agent_id, str(db.get("status", "unregistered")), synced, local,
                                              round(lag, 3), snapshots and self.snapshot_exists(agent_id)))
        return out

    def _lag(self, agent_id: str, synced: float | None, local: float | None) -> float:
        """How long local writes have waited for a sync, from the WAL's mtime and Litestream's last sync.

        The mtime is the *newest* write, so under steady writes it alone would always look fresh; the
        first write seen pending is remembered until a sync passes it. Idle agents have no lag.
        """
        if local is None or (synced is not None and synced >= local):
            self._pending_since.pop(agent_id, None)
            return 0.0
        since = self._pending_since.get(agent_id)
        if since is None or (synced is not None and synced >= since):
            since = self._pending_since[agent_id] = local
        return max(0.0, time.time() - since)

    def sync_final(self, agent_id: str, timeout_s: float | None = None) -> bool:
        """Push the shard to the replica now; True once the replica holds every transaction committed so
        far (so an ending recorded before the call may be published as such). False when Litestream cannot
        say so in time: the caller publishes ``unsynced`` instead and recovery will take the agent."""
        try:
            result = self.litestream.sync(agent_id, timeout_s)
        except (OSError, ReplicationError) as exc:
            log.warning("agent %s: the final sync was not confirmed: %s", agent_id, exc)
            return False
        if result.replicated_txid < result.txid:
            log.warning("agent %s: the final sync left the replica at txid %d, the shard at %d", agent_id,
                        result.replicated_txid, result.txid)
            return False
        return True

    def publish_with(self, agent_id: str, status: str, write: Callable[[], object]) -> None:
        """Write the agent's manifest entry through ``write`` (a node's conditional write, see ``ownership.py``);
        ReplicationError when it cannot be written, OwnershipLost passed through (the caller stops the agent).

        Never swallowed: a fresh node finds agents only through the manifest, so an agent whose entry was
        not written would be invisible to recovery, and one whose ending was not written is recovered
        again (harmless: its journal reports the ending). A node fenced off its lease writes nothing.
        """
        if self.halted is not None:
            log.warning("not writing the manifest of agent %s: %s", agent_id, self.halted.message)
            return
        try:
            write()
        except AgentShardsError:
            raise
        except Exception as exc:  # botocore's and OSError: one error root for callers
            raise ReplicationError(
                f"could not write its manifest entry ({status}) to {self.target.describe()}: {exc}",
                agent_id=agent_id, hint="a fresh node finds agents through the manifest; check the replica "
                "(endpoint, credentials, network), then run the agent again") from exc

    def publish(self, entry: ManifestEntry) -> None:
        """Write ``entry`` unconditionally (what the layout before ownership records wrote), with the same
        refusal when fenced and the same errors as ``publish_with``."""
        self.publish_with(entry.agent_id, entry.status, lambda: write_manifest(self.store, self.target, entry))


def _epoch(stamp: str | None) -> float | None:
    """Litestream's RFC 3339 timestamps carry nanoseconds; Python parses microseconds."""
    if not stamp:
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
