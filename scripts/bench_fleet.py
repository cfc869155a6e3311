"""Fleet density: N live agents, one shard each, replicated by one Litestream to S3 behind a counting proxy.

Each agent makes one LLM step (fake server, zero delay) every --period seconds. Sampled every 2 s while
the fleet runs: summed PSS of supervisor + workers + Litestream (the S3 server, and the fake LLM server
with the counting S3 proxy, run in processes of their own and are reported separately),
CPU, open file descriptors, replication lag per agent (local WAL write -> Litestream's last sync), and
S3 requests per agent per minute counted at the proxy.

    python scripts/bench_fleet.py [--agents 100 500 1000] [--per-worker 25 50 100] [--duration 60]

Lag is measured per write: Litestream's last-sync time minus the WAL write time it covers (0.5 s polls).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from threading import Event as EventType

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import boto3
from bench_replication import loopback_s3_env, mem_kb, pct, start_moto

import agentshards
from agentshards._replication.replication import _epoch

from fault_proxy import FaultProxy


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class LockWatch(threading.Thread):
    """Diagnostic: how long each process held a shard's WAL write lock, sampled from /proc/locks.

    SQLite's WAL write lock is a POSIX lock on byte 120 of the -shm file; a writer that waits longer than
    busy_timeout gets SQLITE_BUSY, so the longest continuous hold per holder names the culprit.
    """

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval, self.stopped = interval, threading.Event()
        self.longest: dict[int, float] = {}  # pid -> longest continuous hold seen, s
        self.holds: dict[int, int] = {}  # pid -> holds seen

    def run(self) -> None:
        since: dict[tuple[int, str], float] = {}
        while not self.stopped.wait(self.interval):
            now, held = time.monotonic(), set()
            for line in Path("/proc/locks").read_text().splitlines():
                f = line.split()
                if len(f) >= 8 and f[1] == "POSIX" and f[3] == "WRITE" and f[6] == "120" and f[7] == "120":
                    held.add((int(f[4]), f[5]))
            for key in held - since.keys():
                since[key] = now
                self.holds[key[0]] = self.holds.get(key[0], 0) + 1
            for key in list(since):
                if key not in held:
                    del since[key]
                else:
                    self.longest[key[0]] = max(self.longest.get(key[0], 0.0), now - since[key])

    def report(self, litestream: int | None) -> str:
        def role(pid: int) -> str:
            return "Litestream" if pid == litestream else f"pid {pid}"
        top = sorted(self.longest.items(), key=lambda kv: -kv[1])[:5]
        return "; ".join(f"{role(pid)}: longest {s:.1f} s ({self.holds[pid]} holds seen)" for pid, s in top)


def _harness_main(s3_port: int, conn: Connection, requests: Synchronized[int], stop: EventType) -> None:
    with agentshards.FakeLLMServer() as llm:
        proxy = FaultProxy(s3_port)
        conn.send((llm.base_url, proxy.endpoint))
        while not stop.wait(0.1):
            requests.value = proxy.requests
        requests.value = proxy.requests
        proxy.close()


class Harness:
    """The fake LLM server and the counting S3 proxy, in a process of their own: they are the benchmark's
    load and instruments, not agentshards, so their memory and CPU are reported apart (like the S3 server)."""

    def __init__(self, s3_port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._requests, self._stop = ctx.Value("q", 0), ctx.Event()
        self._proc = ctx.Process(target=_harness_main, args=(s3_port, child, self._requests, self._stop),
                                 daemon=True)
        self._proc.start()
        self.llm_url, self.s3_endpoint = parent.recv()

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)


def measure(agents: int, per_worker: int, period: float, duration: float, env: dict[str, str], harness: Harness,
            moto_pid: int, work: Path, locks: bool = False) -> str:
    data = work / f"fleet-{agents}-{per_worker}"
    calls = max(1, int(duration / period))
    run_env = dict(env, OPENAI_API_KEY="k", OPENAI_BASE_URL=harness.llm_url)
    fleet = agentshards.Fleet(data, f"s3://bench/fleet-{agents}-{per_worker}", env=run_env,
                              app_dir=Path(__file__).resolve().parent,
                              config=agentshards.SupervisorConfig(agents_per_worker=per_worker, concurrency=agents))
    t0 = time.monotonic()
    fleet.launch("_bench_agents:periodic_llm", {f"a{i:05d}": {"period": period, "calls": calls}
                                                 for i in range(agents)})
    launch_s = time.monotonic() - t0
    results: dict[str, object] = {}
    runner = threading.Thread(target=lambda: results.update(fleet.wait()))
    runner.start()
    watch = LockWatch() if locks else None
    if watch:
        watch.start()
    time.sleep(min(10.0, duration / 3))  # warm-up: workers started, first snapshots uploaded
    samples_pss, samples_fd, lags = [], [], []
    breakdown: tuple[int, int, int] = (0, 0, 0)  # supervisor, workers, Litestream PSS at the peak
    pending: dict[str, float] = {}  # shard -> mtime of a write seen not yet synced
    requests0, t_start = harness.requests, time.monotonic()
    roles0: tuple[tuple[float, float, float], float] | None = None  # (CPU s of each role, when), first sample
    roles1 = roles0
    litestream_pid: int | None = None
    moto_cpu0 = (cpu_seconds(moto_pid), time.monotonic())
    harness_cpu0 = cpu_seconds(harness.pid)
    tick = 0
    while runner.is_alive() and time.monotonic() - t_start < duration - min(10.0, duration / 3):
        litestream = fleet._replication.litestream.pid
        litestream_pid = litestream or litestream_pid
        workers = fleet.worker_pids()
        pids = [os.getpid(), *workers, *([litestream] if litestream else [])]
        if tick % 4 == 0:
            try:  # one read per process: the totals are the sums of the roles
                parts = (mem_kb(os.getpid())[1], sum(mem_kb(p)[1] for p in workers),
                         mem_kb(litestream)[1] if litestream else 0)
                samples_fd.append(sum(fds(p) for p in pids))
                roles = (cpu_seconds(os.getpid()), sum(cpu_seconds(p) for p in workers),
                         cpu_seconds(litestream) if litestream else 0.0)
            except OSError:
                continue
            if sum(parts) > sum(breakdown):
                breakdown = parts
            samples_pss.append(sum(parts))
            roles0 = roles0 if roles0 is not None else (roles, time.monotonic())
            roles1 = (roles, time.monotonic())
        tick += 1
        try:
            listed = fleet._replication.litestream.databases()
        except (OSError, agentshards.AgentShardsError):  # slow or restarting Litestream: next poll
            listed = []
        for db in listed:
            # lag of one write = Litestream's sync time - the write's time: a write is noted when seen
            # unsynced, and measured at the first poll whose last sync covers it (0.5 s polls)
            wal = Path(f"{db['path']}-wal")
            synced = _epoch(db.get("last_sync_at"))
            try:
                written = wal.stat().st_mtime
            except FileNotFoundError:
                continue
            seen = pending.get(db["path"])
            if seen is not None and synced is not None and synced >= seen:
                lags.append(synced - seen)
                del pending[db["path"]]
            if synced is None or written > synced:
                pending.setdefault(db["path"], written)
        time.sleep(0.5)
    window = time.monotonic() - t_start
    requests = harness.requests - requests0
    moto_pss, harness_pss = mem_kb(moto_pid)[1], mem_kb(harness.pid)[1]
    harness_cpu = 100 * (cpu_seconds(harness.pid) - harness_cpu0) / (time.monotonic() - moto_cpu0[1])
    moto_cpu = 100 * (cpu_seconds(moto_pid) - moto_cpu0[0]) / (time.monotonic() - moto_cpu0[1])
    runner.join()
    lock_report = watch.report(litestream_pid) if watch else ""
    if watch:
        watch.stopped.set()
    role_cpu, cpu_pct = "", 0.0
    if roles0 is not None and roles1 is not None and roles1[1] > roles0[1]:
        span = roles1[1] - roles0[1]
        cpu_pct = 100 * (sum(roles1[0]) - sum(roles0[0])) / span
        role_cpu = (f"; CPU supervisor {100 * (roles1[0][0] - roles0[0][0]) / span:.0f} % (with the benchmark's "
                    f"sampling), workers {100 * (roles1[0][1] - roles0[0][1]) / span:.0f} %, Litestream "
                    f"{100 * (roles1[0][2] - roles0[0][2]) / span:.0f} %")
    errors = sorted({str(r)[:160] for r in results.values() if r != calls})[:3]
    ok = sum(1 for r in results.values() if r == calls)
    pss_mb = max(samples_pss) / 1024
    return (f"{agents:>5} agents, {per_worker:>3}/worker: launch {launch_s:5.1f} s; PSS {pss_mb:7.0f} MB "
            f"(S3 server {moto_pss / 1024:.0f} MB, CPU {moto_cpu:.0f} %; fake LLM + S3 proxy {harness_pss / 1024:.0f} "
            f"MB, CPU {harness_cpu:.0f} %); CPU {cpu_pct:5.0f} %; "
            f"fds {max(samples_fd):5d}; "
            f"lag p50 {pct(lags, 0.5):.2f} s p99 {pct(lags, 0.99):.2f} s; "
            f"S3 {requests / agents / (window / 60):.2f} req/agent/min; finished {ok}/{agents}\n"
            f"       PSS at the peak: supervisor {breakdown[0] / 1024:.0f} MB, "
            f"{-(-agents // per_worker)} workers {breakdown[1] / 1024:.0f} MB, "
            f"Litestream {breakdown[2] / 1024:.0f} MB{role_cpu}"
            + (f"\n       WAL write lock: {lock_report}" if lock_report else "")
            + "".join(f"\n       not finished: {e}" for e in errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--per-worker", type=int, nargs="+", default=[50])
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--s3", choices=["moto", "rclone"], default="moto",
                        help="loopback S3 server: moto (Python) or rclone serve s3 (Go, far less CPU)")
    parser.add_argument("--locks", action="store_true",
                        help="diagnostic: sample /proc/locks for the longest WAL write-lock hold per process")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and worker logs; print where")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 shards: Litestream and workers need fds
    tmp_root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    if args.s3 == "moto":
        moto, port = start_moto()
    else:
        from bench_scale import start_rclone

        moto, port = start_rclone(tmp_root / "rclone")
    harness = Harness(port)
    env = loopback_s3_env(harness.s3_endpoint)
    if args.s3 == "moto":
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one LLM step "
          f"per agent every {args.period:.0f} s; Litestream defaults (1 s sync); S3 = {args.s3} on 127.0.0.1")
    try:
        for agents in args.agents:
            for per_worker in args.per_worker:
                print(measure(agents, per_worker, args.period, args.duration, env, harness, moto.pid, tmp_root,
                              args.locks), flush=True)
    finally:
        harness.close()
        moto.terminate()
        moto.wait()
        if args.keep:
            print(f"kept: {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    main()
