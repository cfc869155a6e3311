"""What a ``replicated`` LLM step costs in a fleet: per-step latency and S3 requests, against ``local``.

N agents in one Fleet with an S3 replica (moto on loopback, behind a request-counting proxy; fake LLM server,
zero delay), each making one LLM step every --period seconds. Run once with ``llm_durability="local"`` and once
with ``"replicated"`` (each step then waits for the supervisor to confirm that the replica holds it). Reported
per run: step latency as agent code sees it (p50, p99, max), and S3 requests per step, counted at the proxy
over the window in which every agent was stepping (launch, first snapshots and the final syncs excluded).

    python scripts/bench_confirm.py [--agents 100 1000] [--period 5] [--duration 60] [--modes local replicated bare]

``bare`` measures Litestream's side alone: ``Replication.confirm`` on as many shards from threads of this
process, one commit and one confirmation per shard and period, no fleet.

Run it alone: the numbers are the machine's, and anything else running shifts the p99.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import boto3
from bench_fleet import Harness
from bench_replication import loopback_s3_env, pct, start_moto

import agentshards


def measure(agents: int, durability: str, period: float, duration: float, env: dict[str, str], harness: Harness,
            work: Path) -> str:
    name = f"{durability}-{agents}"
    calls = max(2, int(duration / period))
    run_env = dict(env, OPENAI_API_KEY="k", OPENAI_BASE_URL=harness.llm_url)
    fleet = agentshards.Fleet(work / name, f"s3://bench/{name}", env=run_env, app_dir=Path(__file__).resolve().parent,
                              config=agentshards.SupervisorConfig(agents_per_worker=50, concurrency=agents),
                              run_config=agentshards.RunConfig(llm_durability=durability))  # type: ignore[arg-type]
    t0 = time.monotonic()
    fleet.launch("_bench_confirm_agent:timed_llm", {f"a{i:05d}": {"period": period, "calls": calls}
                                                     for i in range(agents)})
    launch_s = time.monotonic() - t0
    confirms: list[float] = []  # the supervisor's side of each confirmation (Litestream's sync -wait), ms
    if fleet._links is not None:
        server = fleet._links.server
        inner = server._confirm

        def timed(agent_id: str, timeout_s: float) -> None:
            start = time.perf_counter()
            try:
                inner(agent_id, timeout_s)
            finally:
                confirms.append((time.perf_counter() - start) * 1000)

        server._confirm = timed
    results: dict[str, object] = {}
    runner = threading.Thread(target=lambda: results.update(fleet.wait()))
    runner.start()
    counts: list[tuple[float, int]] = []  # (wall clock, S3 requests so far), every 0.25 s
    while runner.is_alive():
        counts.append((time.time(), harness.requests))
        time.sleep(0.25)
    runner.join()
    steps = [s for r in results.values() if isinstance(r, list) for s in r]
    failed = sorted({str(r)[:200] for r in results.values() if not isinstance(r, list)})
    firsts = [r[0][0] for r in results.values() if isinstance(r, list) and r]
    lasts = [r[-1][0] for r in results.values() if isinstance(r, list) and r]
    if not firsts:
        return f"{agents:>5} agents, {durability:>10}: no agent finished: {failed[:2]}"
    start, end = max(firsts) + period, min(lasts)  # every agent has stepped at least once, none has ended
    inside = [s for s in steps if start <= s[0] < end]
    window = [c for c in counts if start <= c[0] <= end]
    requests = (window[-1][1] - window[0][1]) if len(window) >= 2 else 0
    latencies = [s[1] for s in steps]
    steady = [s[1] for r in results.values() if isinstance(r, list) for s in r[1:]]  # after each agent's first
    per_step = requests / len(inside) if inside else float("nan")
    return (f"{agents:>5} agents, {durability:>10}: launch {launch_s:5.1f} s; {len(steps)} steps; latency p50 "
            f"{pct(latencies, 0.5):6.1f} ms, p99 {pct(latencies, 0.99):7.1f} ms, max {max(latencies):7.1f} ms "
            f"(after each agent's first step: p50 {pct(steady, 0.5):6.1f} ms, p99 {pct(steady, 0.99):7.1f} ms); "
            + (f"confirm in the supervisor p50 {pct(confirms, 0.5):.1f} ms, p99 {pct(confirms, 0.99):.1f} ms; "
               if confirms else "")
            + f"S3 {per_step:.2f} requests/step ({requests} in {end - start:.0f} s, {len(inside)} steps); "
            f"finished {agents - len(failed)}/{agents}" + "".join(f"\n       not finished: {e}" for e in failed[:3]))


def measure_bare(agents: int, period: float, duration: float, env: dict[str, str], work: Path) -> str:
    """Litestream's side alone: one Replication in this process, ``agents`` shards, one commit and one
    ``confirm`` per shard every ``period`` seconds, no workers (what a confirmation costs without a fleet)."""
    from agentshards._base.config import litestream_owned
    from agentshards._core.shard import open_shard
    from agentshards._core.sqlite import write_transaction
    from agentshards._fleet.run import start_replication

    config = litestream_owned(agentshards.RunConfig())
    replication = start_replication(work / f"bare-{agents}", f"s3://bench/bare-{agents}", config, env)
    latencies: list[float] = []

    def shard(i: int) -> None:
        agent_id = f"b{i:05d}"
        conn = open_shard(work / f"bare-{agents}", agent_id, config.shard)
        replication.litestream.register(agent_id)
        with write_transaction(conn):
            conn.execute("CREATE TABLE t(x)")
        replication.confirm(agent_id, 60.0)  # the first snapshot, not measured
        time.sleep(random.uniform(0, period))
        end = time.monotonic() + duration
        while time.monotonic() < end:
            with write_transaction(conn):
                conn.execute("INSERT INTO t VALUES (1)")
            start = time.perf_counter()
            replication.confirm(agent_id, 60.0)
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(period)
        conn.close()

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    replication.litestream.stop()
    return (f"{agents:>5} shards, bare confirm (no fleet): {len(latencies)} confirms; "
            f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--modes", nargs="+", default=["local", "replicated"], choices=["local", "replicated", "bare"],
                        help="bare: Replication.confirm alone on as many shards, no fleet")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 shards: Litestream and workers need fds
    tmp_root = Path(tempfile.mkdtemp(prefix="bench-confirm-"))
    moto, port = start_moto()
    harness = Harness(port)
    env = loopback_s3_env(harness.s3_endpoint)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one LLM step "
          f"per agent every {args.period:.0f} s for {args.duration:.0f} s; 50 agents per worker; Litestream defaults; "
          f"S3 = moto on 127.0.0.1 behind a counting proxy", flush=True)
    try:
        for agents in args.agents:
            for mode in args.modes:
                if mode == "bare":
                    print(measure_bare(agents, args.period, args.duration, env, tmp_root), flush=True)
                else:
                    print(measure(agents, mode, args.period, args.duration, env, harness, tmp_root), flush=True)
    finally:
        harness.close()
        moto.terminate()
        moto.wait()
        shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    main()
