"""Chaos against replication: Litestream SIGKILLs, S3 faults behind a proxy, and a replicate->restore soak.

These drive shards through the library's own journal and replication objects (what a worker and the
fleet do), with a "tick" thread that runs the fleet's health checks (Litestream alive, not stalled).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from _chaos_common import S3, Row, shard_rows

import agentshards
from agentshards._base.config import litestream_owned
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards._fleet.run import start_replication
from agentshards._replication.replication import Replication

from fault_proxy import FaultProxy

OWNED = litestream_owned(agentshards.RunConfig()).shard  # how a fleet worker opens a replicated shard


class _Writers:
    """Agents writing local-durability steps (3 KB each) round-robin until stopped, with the shard settings
    a fleet worker uses; the fleet's tick runs beside them. Write errors would reach agent code: counted."""

    def __init__(self, replication: Replication, data: Path, agents: list[str], pause_s: float) -> None:
        self.replication, self.agents, self.pause_s = replication, agents, pause_s
        self.journals = {a: Journal(open_shard(data, a, OWNED), a) for a in agents}
        self.runs = {}
        for agent_id, journal in self.journals.items():
            replication.litestream.register(agent_id)
            self.runs[agent_id] = journal.begin_run("chaos:writer", "{}", "d").id
        self.written = dict.fromkeys(agents, 0)
        self.errors: list[str] = []
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._tick, daemon=True)]

    def step(self, agent_id: str) -> None:
        with self._lock:
            n = self.written[agent_id]
            self.journals[agent_id].record_step(self.runs[agent_id], f"s{n}", "step", f'"{n}:' + "x" * 3000 + '"')
            self.written[agent_id] = n + 1

    def start(self) -> _Writers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def close(self) -> None:
        for journal in self.journals.values():
            journal.close()

    def _write(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.step(self.agents[i % len(self.agents)])
            except Exception as exc:
                self.errors.append(repr(exc))
            i += 1
            self._stop.wait(self.pause_s)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with suppress(agentshards.AgentShardsError, OSError):
                self.restarts += self.replication.litestream.ensure_running()
                self.restarts += self.replication.restart_if_stalled()


def _catch_up(replication: Replication, agents: list[str], timeout_s: float) -> float | None:
    """Seconds until every agent's replica holds all its local writes (and a snapshot), or None."""
    start = time.monotonic()
    pending = list(agents)
    while pending and time.monotonic() - start < timeout_s:
        try:
            replication.confirm(pending[0], min(15.0, timeout_s))
            pending.pop(0)
        except agentshards.ReplicationError:
            time.sleep(0.5)
    return None if pending else time.monotonic() - start


def _check_restores(row: Row, s3: S3, replica: str, agents: list[str], written: dict[str, int],
                    work: Path) -> None:
    """Restore every agent straight from S3: all written steps there, integrity_check passes."""
    for agent_id in agents:
        back = work / f"back-{agent_id}-{time.monotonic_ns()}"
        try:
            path = agentshards.restore_agent(agent_id, back, replica, env=s3.env)
        except agentshards.AgentShardsError as exc:
            row.corrupt_restores += 1
            row.notes.append(f"restore of {agent_id} failed: {exc}"[:300])
            continue
        rows, ok = shard_rows(path)
        row.corrupt_restores += not ok
        row.steps_lost += max(0, written[agent_id] - len(rows))


def litestream_kills(rng: random.Random, rounds: int, work: Path, s3: S3) -> Row:
    """SIGKILL Litestream at random moments while agents write; the tick restarts it; nothing is lost."""
    row = Row("SIGKILL Litestream while writing")
    for r in range(rounds):
        replica = f"s3://{s3.bucket(f'chaos-lk-{r}-{rng.randrange(10**6)}')}/x"
        data, agents = work / f"lk-{r}", ["k0", "k1", "k2"]
        replication = start_replication(data, replica, agentshards.RunConfig(), s3.env)
        writers = _Writers(replication, data, agents, 0.01).start()
        try:
            for _ in range(3):
                time.sleep(rng.uniform(0.3, 2.0))
                pid = replication.litestream.pid
                if pid:  # never os.kill(0, ...): that is our own process group
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        row.faults += 1
            time.sleep(1.0)
            writers.stop()
            caught = _catch_up(replication, agents, 120)
            row.notes.append(f"round {r}: {sum(writers.written.values())} steps, caught up "
                             f"{'never' if caught is None else f'{caught:.1f} s'} after the last write")
            row.errors_surfaced += len(writers.errors)
        finally:
            writers.stop()
            writers.close()
            replication.litestream.stop()
        row.runs += 1
        _check_restores(row, s3, replica, agents, writers.written, work)
    if not row.faults:
        row.skip("Litestream was never running when a SIGKILL was due")
    return row


def s3_fault(kind: str, seconds: float, rng: random.Random, work: Path, s3: S3, stall_s: float) -> Row:
    """One S3 fault for ``seconds`` while agents write, then: catch-up time, and every agent restorable with
    every step. kinds: outage (connection refused), errors (20 % 503/500), hang (a black hole; Litestream's
    own client would wait 24 h), wipe (every object in the bucket deleted)."""
    titles = {"outage": f"S3 refuses connections for {seconds:.0f} s",
              "errors": f"S3 answers 20 % 503/500 for {seconds:.0f} s",
              "hang": f"S3 connections hang ({seconds:.0f} s)",
              "wipe": "S3 bucket wiped while running"}
    row = Row(titles[kind])
    proxy = FaultProxy(s3.port, seed=rng.randrange(10**6))
    bucket = s3.bucket(f"chaos-{kind}-{rng.randrange(10**6)}")
    replica, agents = f"s3://{bucket}/x", ["f0", "f1", "f2"]
    env = dict(s3.env, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    # health checks every 3 s (default 30 s) so a wiped bucket is noticed within this short scenario
    config = agentshards.RunConfig(litestream=agentshards.LitestreamConfig(stall_timeout_s=stall_s,
                                                                           health_check_interval_s=3.0))
    replication = start_replication(work / kind, replica, config, env)
    writers = _Writers(replication, work / kind, agents, 0.02)
    try:
        for agent_id in agents:
            writers.step(agent_id)
            replication.confirm(agent_id, 30)
        writers.start()
        time.sleep(1.0)
        inject: dict[str, Callable[[], object]] = {
            "outage": proxy.outage, "errors": lambda: proxy.errors(0.2), "hang": proxy.hang,
            "wipe": lambda: s3.wipe(bucket)}
        inject[kind]()
        row.faults += 1
        time.sleep(seconds if kind != "wipe" else 4.0)
        if kind in ("outage", "hang"):
            try:  # a replicated step now fails clearly within its timeout; it does not hang
                replication.confirm(agents[0], 2)
            except agentshards.ReplicationError:
                row.errors_surfaced += 1
        proxy.resume()
        time.sleep(2.0)
        writers.stop()
        caught = _catch_up(replication, agents, 180)
        row.notes.append(f"{sum(writers.written.values())} steps written, {proxy.injected} errors injected, "
                         f"{writers.restarts} watchdog restarts; caught up "
                         f"{'NEVER' if caught is None else f'{caught:.1f} s'} after writes stopped")
        if caught is None:
            row.steps_lost += 1
        row.errors_surfaced += len(writers.errors)
        row.notes += writers.errors[:3]
    finally:
        writers.stop()
        writers.close()
        proxy.resume()
        replication.litestream.stop()
        proxy.close()
    row.runs += 1
    _check_restores(row, s3, replica, agents, writers.written, work)
    return row


def soak(rng: random.Random, seconds: float, work: Path, s3: S3) -> Row:
    """Agents write while a random agent is restored every ~2 s: each restore passes integrity_check and
    its journal is a prefix of the live one (same step names, same outputs, in order)."""
    row = Row("replicate -> restore soak")
    replica = f"s3://{s3.bucket(f'chaos-soak-{rng.randrange(10**6)}')}/x"
    data, agents = work / "soak", [f"a{i}" for i in range(4)]
    replication = start_replication(data, replica, agentshards.RunConfig(), s3.env)
    writers = _Writers(replication, data, agents, 0.01)
    behind: list[int] = []
    try:
        for agent_id in agents:
            writers.step(agent_id)
            replication.confirm(agent_id, 30)
        writers.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.0, 3.0))
            agent_id = rng.choice(agents)
            back = work / f"soak-back-{row.runs}"
            row.runs += 1
            try:
                restored, ok = shard_rows(agentshards.restore_agent(agent_id, back, replica, env=s3.env))
            except agentshards.AgentShardsError as exc:
                row.corrupt_restores += 1
                row.notes.append(f"restore of {agent_id} failed: {exc}"[:300])
                continue
            live, _ = shard_rows(data / f"{agent_id}.db")
            row.corrupt_restores += not ok or live[:len(restored)] != restored
            behind.append(len(live) - len(restored))
        writers.stop()
        row.errors_surfaced += len(writers.errors)
    finally:
        writers.stop()
        writers.close()
        replication.litestream.stop()
    if behind:
        behind.sort()
        row.notes.append(f"{row.runs} restores; restored copy behind the live journal by a median "
                         f"{behind[len(behind) // 2]} steps, max {behind[-1]} (writes every 10 ms, async)")
    return row
