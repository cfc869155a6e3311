"""Where the fleet-density floor is: Litestream's own CPU per replicated shard, with no agents running.

N shards are registered with one Litestream replicating to rclone's loopback S3 server. A plain Python
loop then commits one small transaction per shard every --period seconds (what one LLM step per agent
every 5 s costs the replication layer), and finally nothing at all. Nobody polls Litestream's control
socket meanwhile. Reported per phase: Litestream's CPU, the writer's own CPU (the baseline: the
cheapest possible client of the same shards), and the S3 server's CPU.

    python scripts/bench_litestream.py [--shards 100 250 500 1000] [--period 5] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fleet import cpu_seconds
from bench_replication import loopback_s3_env, mem_kb
from bench_scale import start_rclone

import agentshards
from agentshards._base.config import litestream_owned
from agentshards._core.shard import open_shard
from agentshards._core.sqlite import write_transaction
from agentshards._fleet.run import start_replication


def phase(seconds: float, litestream: int, s3: int, write: object | None) -> tuple[float, float, float]:
    """CPU % of Litestream, of this process and of the S3 server over ``seconds``."""
    t0, l0, m0, s0 = time.monotonic(), cpu_seconds(litestream), cpu_seconds(os.getpid()), cpu_seconds(s3)
    while time.monotonic() - t0 < seconds:
        if callable(write):
            write()
        else:
            time.sleep(0.2)
    span = time.monotonic() - t0
    return (100 * (cpu_seconds(litestream) - l0) / span, 100 * (cpu_seconds(os.getpid()) - m0) / span,
            100 * (cpu_seconds(s3) - s0) / span)


def measure(shards: int, period: float, seconds: float, env: dict[str, str], s3_pid: int, work: Path) -> str:
    data = work / f"ls-{shards}"
    config = litestream_owned(agentshards.RunConfig())
    replication = start_replication(data, f"s3://bench/ls-{shards}", config, env)
    try:
        conns = []
        for i in range(shards):
            agent_id = f"s{i:05d}"
            conn = open_shard(data, agent_id, config.shard)
            conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
            conns.append(conn)
            replication.litestream.register(agent_id)
        pid = replication.litestream.pid
        assert pid is not None
        time.sleep(5.0)  # initial syncs of the registrations
        state = {"next": 0, "due": time.monotonic()}
        gap = period / shards

        def write() -> None:  # one commit per shard per period, spread evenly
            now = time.monotonic()
            while state["due"] <= now:
                with write_transaction(conns[int(state["next"]) % shards]) as c:
                    c.execute("INSERT INTO t (body) VALUES (?)", ("x" * 400,))
                state["next"] += 1
                state["due"] += gap
            time.sleep(max(0.0, min(0.05, state["due"] - time.monotonic())))

        busy = phase(seconds, pid, s3_pid, write)
        idle = phase(seconds, pid, s3_pid, None)
        pss = mem_kb(pid)[1] / 1024
        for conn in conns:
            conn.close()
    finally:
        replication.litestream.stop()
    rate = shards / period
    return (f"{shards:>5} shards, {rate:5.0f} commits/s: Litestream CPU {busy[0]:5.1f} % "
            f"({10 * busy[0] / rate:.2f} ms per commit), idle {idle[0]:5.1f} % ({10 * idle[0] / shards:.3f} ms per "
            f"shard-second); PSS {pss:4.0f} MB ({1024 * pss / shards:.0f} KB/shard); baseline writer "
            f"{busy[1]:4.1f} %; S3 server {busy[2]:4.1f} % busy, {idle[2]:4.1f} % idle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="bench-ls-"))
    server, port = start_rclone(work / "rclone")
    env = loopback_s3_env(f"http://127.0.0.1:{port}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one commit "
          f"per shard every {args.period:.0f} s; Litestream defaults (1 s sync); S3 = rclone on 127.0.0.1; "
          f"{args.seconds:.0f} s per phase")
    try:
        for shards in args.shards:
            print(measure(shards, args.period, args.seconds, env, server.pid, work), flush=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
