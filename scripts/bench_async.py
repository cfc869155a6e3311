"""Async agents: what durability costs per LLM call, and how long the event loop stalls at 500-1,000 agents.

(a) One async agent on one loop makes N rounds of [a raw ``AsyncOpenAI`` call, a durable
    ``await agent.llm.chat.completions.create``] against the same fake LLM server (a process of its own),
    synchronous=FULL. Per-call overhead = median(durable) - median(raw), and the ratio. Each durable call
    commits three transactions (named in the output); the floor under the overhead is three fsynced WAL
    commits, measured on the same disk.
(b) N async agents on one loop (arun_agent), one durable LLM step each every --period seconds, for
    --duration seconds. A ticker task sleeps 5 ms at a time and records how late it wakes: the worst
    lateness is the worst stall of the loop. Reported for the start-up (opening N shards) and the steady
    state (after every agent made its first step) separately. Baseline ``raw``: the same load with a raw
    AsyncOpenAI client and no journal.

Both are run for each way of running the journal's SQLite work (agentshards._core.offload): ``thread``
(asyncio.to_thread, the default), ``writer`` (one shared writer thread), ``inline`` (on the loop).

    python scripts/bench_async.py [--quick] [--agents 500 1000] [--modes thread writer inline]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replication import pct, start_server

import agentshards
from agentshards._base.config import LLMConfig, RunConfig, ShardConfig
from agentshards._core import offload
from agentshards._core.sqlite import open_connection

import _bench_async_agents as bench_agents

TRANSACTIONS = ("begin_attempt: the attempt row, committed before the request goes out",
                "record_answer: the cost-ledger row and the attempt marked answered",
                "record_step: the step row with the stored answer")


def commit_floor_ms(directory: Path, commits: int = 200) -> float:
    """Median ms of one small fsynced WAL commit (synchronous=FULL) on the benchmark's disk."""
    conn = open_connection(directory / "floor.db", ShardConfig(synchronous="FULL"))
    conn.execute("CREATE TABLE IF NOT EXISTS t(x TEXT)")
    times = []
    for i in range(commits):
        started = time.perf_counter()
        with conn:
            conn.execute("INSERT INTO t VALUES (?)", (str(i) * 50,))
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return statistics.median(times)


def overhead(base_url: str, work: Path, mode: str, rounds: int) -> dict[str, float]:
    offload.DEFAULT_MODE = mode  # type: ignore[assignment]
    config = RunConfig(shard=ShardConfig(synchronous="FULL"), llm=LLMConfig(api_key="bench", base_url=base_url))
    timings = agentshards.run_agent(bench_agents.raw_vs_durable, agent_id=f"latency-{mode}", data_dir=work / mode,
                                    config=config, n=rounds, base_url=base_url)
    warm = rounds // 10  # first calls pay for imports and connection set-up
    raw, durable = statistics.median(timings["raw"][warm:]), statistics.median(timings["durable"][warm:])
    return {"raw": raw, "durable": durable, "overhead": durable - raw, "ratio": durable / raw,
            "durable_p99": pct(timings["durable"][warm:], 0.99), "raw_p99": pct(timings["raw"][warm:], 0.99)}


async def _fleet(base_url: str, data_dir: Path, agents: int, period: float, duration: float,
                 raw: bool) -> dict[str, Any]:
    config = RunConfig(shard=ShardConfig(synchronous="FULL"), llm=LLMConfig(api_key="bench", base_url=base_url))
    calls = max(1, round(duration / period))
    lateness: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        tick = 0.005
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(tick)
            lateness.append((before, (time.perf_counter() - before - tick) * 1000))

    rng = random.Random(7)
    ticking = asyncio.ensure_future(ticker())
    bench_agents.STARTED.clear()
    started = time.perf_counter()
    cpu0 = time.process_time()
    if raw:
        import openai

        client = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=2)  # durable calls retry too
        runs = [bench_agents.periodic_raw(client, period, calls, rng.uniform(0, period)) for i in range(agents)]
    else:
        runs = [agentshards.arun_agent(bench_agents.periodic, agent_id=f"a{i:05d}", data_dir=data_dir, config=config,
                                       period=period, calls=calls, offset=rng.uniform(0, period))
                for i in range(agents)]
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    results = [o for o in outcomes if not isinstance(o, BaseException)]
    if raw:
        await client.close()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    stop.set()
    await ticking
    assert sum(results) == (agents - len(failed)) * calls
    all_started = max(bench_agents.STARTED, default=started)  # every shard is open and every run begun
    steady_from = all_started + period  # ... and every agent has made its first step (offsets < period)
    steady_until = started + elapsed - period  # before agents finish and close their shards
    startup = [late for at, late in lateness if at < steady_from]
    steady = [late for at, late in lateness if steady_from <= at < steady_until] or [0.0]
    return {"failed": len(failed), "failure": repr(failed[0])[:160] if failed else "",
            "steps": (agents - len(failed)) * calls, "elapsed": elapsed,
            "steps_per_s": (agents - len(failed)) * calls / elapsed,
            "cpu_pct": 100 * cpu / elapsed, "startup_max": max(startup), "steady_max": max(steady),
            "steady_p99": pct(steady, 0.99), "steady_p50": pct(steady, 0.5), "setup_s": all_started - started,
            "steady_s": steady_until - steady_from}


def fleet(base_url: str, work: Path, mode: str, agents: int, period: float, duration: float) -> dict[str, Any]:
    if mode != "raw":
        offload.DEFAULT_MODE = mode  # type: ignore[assignment]
    data_dir = work / f"fleet-{mode}-{agents}"
    return asyncio.run(_fleet(base_url, data_dir, agents, period, duration, raw=mode == "raw"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 100 and 500 agents, 15 s each")
    parser.add_argument("--rounds", type=int, default=None, help="(a): raw+durable call pairs (default 400)")
    parser.add_argument("--agents", type=int, nargs="+", default=None, help="(b): agent counts (default 500 1000)")
    parser.add_argument("--period", type=float, default=5.0, help="(b): seconds between an agent's steps")
    parser.add_argument("--duration", type=float, default=None, help="(b): seconds per run (default 40)")
    parser.add_argument("--modes", nargs="+", default=list(offload.MODES), choices=list(offload.MODES))
    parser.add_argument("--dir", type=Path, default=None, help="where shards go (default: a temp dir)")
    args = parser.parse_args()
    rounds = args.rounds or (100 if args.quick else 400)
    counts = args.agents or ([100, 500] if args.quick else [500, 1000])
    duration = args.duration or (15.0 if args.quick else 40.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 3 files per shard plus sockets

    work = Path(tempfile.mkdtemp(prefix="bench-async-", dir=args.dir))
    server, port = start_server([sys.executable, "-m", "agentshards.testing._fakellm", "--port", "{port}"])
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        print(f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()},"
              f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {os.getloadavg()[0]:.2f};"
              f" fake LLM server in its own process; synchronous=FULL; shards in {work}")
        print(f"\n(a) per-call overhead, {rounds} rounds of [raw AsyncOpenAI call, durable call], one loop")
        print(f"    one fsynced WAL commit on this disk: {commit_floor_ms(work):.2f} ms (median)")
        print("    each durable call commits 3 transactions: " + "; ".join(TRANSACTIONS))
        for mode in args.modes:
            r = overhead(base_url, work, mode, rounds)
            print(f"    {mode:7s} raw {r['raw']:.2f} ms, durable {r['durable']:.2f} ms (p99 {r['durable_p99']:.2f}):"
                  f" +{r['overhead']:.2f} ms per call, ratio {r['ratio']:.2f}x")
        print(f"\n(b) N async agents on one loop, one durable LLM step each every {args.period:g} s, {duration:g} s;"
              " loop stall = how late a 5 ms ticker wakes")
        for agents in counts:
            for mode in ["raw", *args.modes]:
                r = fleet(base_url, work, mode, agents, args.period, duration)
                print(f"    {agents:5d} agents {mode:7s} {r['steps']:6.0f} steps ({r['steps_per_s']:.0f}/s), CPU"
                      f" {r['cpu_pct']:.0f}%: steady stall max {r['steady_max']:.1f} ms, p99"
                      f" {r['steady_p99']:.1f} ms, p50 {r['steady_p50']:.1f} ms; start-up stall max"
                      f" {r['startup_max']:.1f} ms ({r['setup_s']:.1f} s to start all; steady window"
                      f" {r['steady_s']:.0f} s)" + (f"; {r['failed']} agents FAILED: {r['failure']}"
                                                    if r["failed"] else ""))
                shutil.rmtree(work / f"fleet-{mode}-{agents}", ignore_errors=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
