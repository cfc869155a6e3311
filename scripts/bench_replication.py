"""Replication figures, each beside a baseline measured in the same run.

- commit -> replicated (Litestream's own last_sync_at for the shard passes the commit time), p50/p99,
  for N agents each committing one step every --interval seconds, at Litestream's default intervals;
- a `replicated` step (commit + `sync -wait` + snapshot check) vs a `local` step (commit only);
- restore of a 100 KB and a 10 MB shard vs copying the same bytes;
- Litestream's RSS and PSS with N agents registered;
- S3 requests per idle agent per minute, counted at a loopback proxy in front of moto, then one write
  that must become visible within the lag target.

    python scripts/bench_replication.py [--agents 1 100] [--idle-seconds 600] [--interval 5]

Needs the test extra (moto) for the S3 server. Everything binds to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from agentshards import LitestreamConfig, RunConfig, restore_agent
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards._fleet.run import start_replication
from agentshards._replication.replication import _epoch

from fault_proxy import FaultProxy


def start_server(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start a loopback server whose argv contains ``{port}``; return it once the port accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([a.format(port=port) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def loopback_s3_env(endpoint: str, key: str = "bench") -> dict[str, str]:
    """This process's environment with every real AWS setting removed, pointed at a loopback S3 server
    with the throwaway credentials ``key``/``key`` (what the servers started here accept)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=key, AWS_REGION="us-east-1", AWS_ENDPOINT_URL_S3=endpoint)
    return env


def start_moto() -> tuple[subprocess.Popen[bytes], int]:
    return start_server([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", "{port}"])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def mem_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def _sync_times(replication: object) -> dict[str, float]:
    """Litestream's own last_sync_at per shard (one control-socket call for all of them)."""
    out = {}
    for db in replication.litestream.databases():  # type: ignore[attr-defined]
        when = _epoch(db.get("last_sync_at"))
        if when is not None:
            out[Path(db["path"]).stem] = when
    return out


def lag_and_memory(env: dict[str, str], replica: str, agents: int, interval: float, rounds: int,
                   work: Path) -> tuple[list[float], tuple[int, int]]:
    data = work / f"lag-{agents}"
    replication = start_replication(data, replica, RunConfig(), env)
    journals = {}
    try:
        for i in range(agents):
            agent_id = f"a{i:04d}"
            journal = Journal(open_shard(data, agent_id, RunConfig().shard), agent_id)
            replication.litestream.register(agent_id)
            journals[agent_id] = (journal, journal.begin_run("bench:lag", "{}", "d").id)
        for agent_id in journals:  # first snapshot of every shard before measuring
            replication.litestream.sync(agent_id, 120)
        lags: list[float] = []
        for r in range(rounds):
            start_round = time.monotonic()
            pending: dict[str, float] = {}
            for agent_id, (journal, run_id) in journals.items():
                journal.record_step(run_id, f"s{r}", "step", '"' + "v" * 1000 + '"')
                pending[agent_id] = time.time()
                time.sleep(interval / agents / 2)  # spread the commits over half the interval
            while pending:
                synced = _sync_times(replication)
                for agent_id in list(pending):
                    if synced.get(agent_id, 0.0) >= pending[agent_id]:
                        lags.append(synced[agent_id] - pending.pop(agent_id))
                if time.monotonic() - start_round > 60:
                    raise RuntimeError(f"{len(pending)} commits not replicated after 60 s")
                time.sleep(0.01)
            time.sleep(max(0.0, interval - (time.monotonic() - start_round)))
        return lags, mem_kb(pid_of(replication) or 0)
    finally:
        for journal, _ in journals.values():
            journal.close()
        replication.litestream.stop()


def pid_of(replication: object) -> int | None:
    return replication.litestream.pid  # type: ignore[attr-defined,no-any-return]


def step_costs(env: dict[str, str], replica: str, work: Path, n: int = 50) -> tuple[float, float]:
    data = work / f"cost-{abs(hash(replica))}"
    replication = start_replication(data, replica, RunConfig(), env)
    try:
        journal = Journal(open_shard(data, "c", RunConfig().shard), "c")
        replication.litestream.register("c")
        run_id = journal.begin_run("bench:cost", "{}", "d").id
        replication.confirm("c", 30)
        local, replicated = [], []
        for i in range(n):
            t0 = time.perf_counter()
            journal.record_step(run_id, f"l{i}", "step", '"' + "v" * 1000 + '"')
            local.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            journal.record_step(run_id, f"r{i}", "step", '"' + "v" * 1000 + '"')
            replication.confirm("c", 30)
            journal.mark_replicated(run_id, f"r{i}")
            replicated.append(time.perf_counter() - t0)
        journal.close()
        return statistics.median(local) * 1000, statistics.median(replicated) * 1000
    finally:
        replication.litestream.stop()


def restore_times(env: dict[str, str], replica: str, work: Path, size: int) -> tuple[float, float, float]:
    """Medians of 5: copying the file, restoring it (in-process LTX reader), restoring it with one
    `litestream restore` process (the other way, as the baseline)."""
    data = work / f"restore-src-{size}"
    replication = start_replication(data, replica, RunConfig(), env)
    agent_id = f"r{size}"
    try:
        journal = Journal(open_shard(data, agent_id, RunConfig().shard), agent_id)
        replication.litestream.register(agent_id)
        run_id = journal.begin_run("bench:restore", "{}", "d").id
        blob = '"' + "v" * 4000 + '"'
        for i in range(max(1, size // 4100)):
            journal.record_step(run_id, f"s{i}", "step", blob)
        replication.confirm(agent_id, 60)
        journal.close()
    finally:
        replication.litestream.stop()
    src = data / f"{agent_id}.db"
    copies, restores, binary = [], [], []
    for i in range(5):
        t0 = time.perf_counter()
        shutil.copyfile(src, work / f"copy-{size}-{i}.db")
        copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        restore_agent(agent_id, work / f"restored-{size}-{i}", replica, env=env)
        restores.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        restore_agent(agent_id, work / f"binary-{size}-{i}", replica, env=env,
                      litestream=LitestreamConfig(native_restore=False))
        binary.append(time.perf_counter() - t0)
    return statistics.median(copies) * 1000, statistics.median(restores) * 1000, statistics.median(binary) * 1000


def idle_requests(env: dict[str, str], bucket: str, proxy: FaultProxy, agents: int, seconds: float,
                  work: Path, interval: str) -> tuple[float, float]:
    penv = dict(env, AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{proxy.port}")
    replica = f"s3://{bucket}/idle-{interval}"
    data = work / f"idle-{interval}"
    config = RunConfig(litestream=LitestreamConfig(idle_check_interval=interval))
    replication = start_replication(data, replica, config, penv)
    try:
        journals = []
        for i in range(agents):
            agent_id = f"i{i:04d}"
            journal = Journal(open_shard(data, agent_id, RunConfig().shard), agent_id)
            replication.litestream.register(agent_id)
            journal.begin_run("bench:idle", "{}", "d")
            replication.litestream.sync(agent_id, 120)
            journals.append(journal)
        time.sleep(3)  # let start-up traffic settle
        before = proxy.requests
        time.sleep(seconds)
        idle = proxy.requests - before
        journal = journals[0]
        run_id = journal.runs()[-1].id
        journal.record_step(run_id, "wake", "step", '"x"')
        committed = time.time()
        while _sync_times(replication).get("i0000", 0.0) < committed:
            if time.time() - committed > 30:
                raise RuntimeError("the write after the idle period was not replicated within 30 s")
            time.sleep(0.01)
        wake_lag = _sync_times(replication)["i0000"] - committed
        for j in journals:
            j.close()
        return idle / agents / (seconds / 60), wake_lag
    finally:
        replication.litestream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between a shard's commits")
    parser.add_argument("--idle-agents", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=600.0)
    parser.add_argument("--idle-interval", default=LitestreamConfig().idle_check_interval,
                        help="Litestream L0-retention-check / level-1 interval to measure idle traffic with")
    parser.add_argument("--only-idle", action="store_true", help="skip everything but the idle measurement")
    parser.add_argument("--only-restore", action="store_true", help="skip everything but the restore times")
    args = parser.parse_args()

    moto, port = start_moto()
    proxy = FaultProxy(port)
    env = loopback_s3_env(f"http://127.0.0.1:{port}")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    s3.create_bucket(Bucket="bench")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"S3 = moto_server on 127.0.0.1; Litestream default sync interval (1 s)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for kind, replica in () if args.only_idle or args.only_restore else (("file", str(work / "file-replica")),
                                                             ("s3", "s3://bench/cost")):
                local, replicated = step_costs(env, replica, work)
                print(f"step cost [{kind}]: local {local:.2f} ms, replicated {replicated:.2f} ms "
                      f"({replicated / local:.1f}x local)")
            for size, label in () if args.only_idle else ((100_000, "100 KB"), (10_000_000, "10 MB")):
                copy, restored, binary = restore_times(env, f"s3://bench/restore{size}", work, size)
                print(f"restore {label} from S3: {restored:.0f} ms; with a litestream restore process "
                      f"{binary:.0f} ms ({binary / restored:.1f}x); copying the same file: {copy:.1f} ms")
            for n in [] if args.only_idle or args.only_restore else args.agents:
                lags, (rss, pss) = lag_and_memory(env, f"s3://bench/lag{n}", n, args.interval, args.rounds, work)
                print(f"{n:>4} agents, one commit each per {args.interval:.0f} s: commit->replica lag "
                      f"p50 {pct(lags, 0.5):.2f} s, p99 {pct(lags, 0.99):.2f} s ({len(lags)} commits); "
                      f"litestream RSS {rss / 1024:.0f} MB, PSS {pss / 1024:.0f} MB")
            if args.only_restore:
                return
            per_min, wake = idle_requests(env, "bench", proxy, args.idle_agents, args.idle_seconds, work,
                                          args.idle_interval)
            print(f"idle: {per_min:.2f} S3 requests per agent per minute ({args.idle_agents} agents registered, "
                  f"{args.idle_seconds:.0f} s counted at the proxy, litestream intervals {args.idle_interval}); "
                  f"the next write replicated after {wake:.2f} s")
    finally:
        proxy.close()
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
