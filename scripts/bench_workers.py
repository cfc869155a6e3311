"""Fleet workers: agents hosted as threads (a ``def`` agent) or as tasks on one event loop (an ``async def``
agent), compared at 1,000 agents for memory, CPU and step lag.

Each mode runs the same load: every agent makes one durable LLM call every --period seconds on a fixed
schedule (a random offset in [0, period) per agent, the same offsets in both modes), --calls times, against
the fake LLM server (zero delay, in a process of its own). A Fleet with no replica: local shards only, no S3
server and no Litestream, so what is measured is the workers. concurrency = agents: every agent runs at once;
agents_per_worker is swept per mode.

Sampled every 2 s from the moment every agent runs its code until the first agent ends: summed PSS of the
workers, and of the whole fleet (supervisor = this process, which also samples; the zygote; the workers);
CPU seconds of the workers over that window; step lag = how late each call due inside the window started
against its schedule (p50, p99, max); and the time of the durable call itself.

    python scripts/bench_workers.py [--quick] [--agents 1000] [--threads 50 100] [--asyncio 100 250 500]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fleet import cpu_seconds
from bench_replication import mem_kb, pct, start_server

import agentshards

SCRIPTS = Path(__file__).resolve().parent
TARGETS = {"threads": "_bench_agents:scheduled_llm", "asyncio": "_bench_async_agents:scheduled_llm"}
SAMPLE_S = 2.0


@dataclass
class Row:
    mode: str
    per_worker: int
    workers: int
    launch_s: float  # Fleet.launch: every shard created
    started_s: float  # from launch until every agent runs its code
    window_s: float  # every agent running: the sampled window
    samples: int
    pss_workers_kb: int  # peak of the summed PSS of the workers
    pss_fleet_kb: int  # peak of the summed PSS of supervisor + zygote + workers
    cpu_workers_s: float  # CPU seconds of all workers over the window
    cpu_llm_pct: float  # the fake LLM server's CPU over the window (the load, not the fleet)
    lag: list[float]  # s late, per call due inside the window
    call: list[float]  # s per durable call, same calls
    finished: int
    errors: list[str]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def measure(mode: str, agents: int, per_worker: int, period: float, calls: int, llm_url: str, llm_pid: int,
            work: Path, start_timeout_s: float) -> Row:
    name = f"{mode}-{per_worker}"
    marks = work / f"marks-{name}"
    for sub in ("started", "ended"):
        (marks / sub).mkdir(parents=True)
    env = dict(os.environ, OPENAI_API_KEY="bench", OPENAI_BASE_URL=llm_url)
    fleet = agentshards.Fleet(work / name, env=env, app_dir=SCRIPTS,
                              config=agentshards.SupervisorConfig(agents_per_worker=per_worker, concurrency=agents))
    rng = random.Random(7)  # the same offsets for both modes
    inputs = {f"a{i:05d}": {"period": period, "calls": calls, "offset": rng.uniform(0, period), "marks": str(marks)}
              for i in range(agents)}
    t0 = time.monotonic()
    fleet.launch(TARGETS[mode], inputs)
    launch_s = time.monotonic() - t0
    results: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: results.update(fleet.wait()), daemon=True)
    runner.start()

    def ended() -> bool:
        return not runner.is_alive() or any(os.scandir(marks / "ended"))

    deadline = time.monotonic() + start_timeout_s
    while len(os.listdir(marks / "started")) < agents and not ended() and time.monotonic() < deadline:
        time.sleep(0.2)
    started_s = time.monotonic() - t0
    window_from, w0 = time.time(), time.monotonic()
    cpu0: dict[int, float] = {}
    cpu1: dict[int, float] = {}  # last CPU seconds read per worker (a worker read after it exited keeps its last)
    llm_cpu0 = cpu_seconds(llm_pid)
    pss_workers = pss_fleet = samples = 0
    next_sample = time.monotonic()
    while not ended():
        if time.monotonic() >= next_sample:
            next_sample += SAMPLE_S
            workers = fleet.worker_pids()
            try:
                zygotes = {_ppid(p) for p in workers}
                part = sum(mem_kb(p)[1] for p in workers)
                whole = part + mem_kb(os.getpid())[1] + sum(mem_kb(z)[1] for z in zygotes)
                for p in workers:
                    cpu1[p] = cpu_seconds(p)
                    cpu0.setdefault(p, cpu1[p])
            except OSError:  # a worker exited between listing and reading: the next sample
                continue
            pss_workers, pss_fleet = max(pss_workers, part), max(pss_fleet, whole)
            samples += 1
        time.sleep(0.1)
    window_to, window_s = time.time(), time.monotonic() - w0
    for p in cpu1:
        with contextlib.suppress(OSError):  # exited: its last reading stands
            cpu1[p] = cpu_seconds(p)
    cpu_llm = 100 * (cpu_seconds(llm_pid) - llm_cpu0) / max(window_s, 1e-9)
    workers_n = -(-agents // per_worker)
    runner.join()
    lag, call, errors, finished = [], [], set(), 0
    for outcome in results.values():
        if isinstance(outcome, list) and len(outcome) == calls:
            finished += 1
            for due, begun, done in outcome:
                if window_from <= due <= window_to:
                    lag.append(begun - due)
                    call.append(done - begun)
        else:
            errors.add(repr(outcome)[:160])
    shutil.rmtree(work / name, ignore_errors=True)
    shutil.rmtree(marks, ignore_errors=True)
    return Row(mode, per_worker, workers_n, launch_s, started_s, window_s, samples, pss_workers, pss_fleet,
               sum(cpu1[p] - cpu0[p] for p in cpu1), cpu_llm, lag, call, finished, sorted(errors)[:3])


HEADER = (f"{'mode':8} {'per worker':>10} {'workers':>7} {'launch':>7} {'all run':>8} {'window':>7} "
          f"{'PSS workers':>12} {'PSS fleet':>10} {'per agent':>10} {'CPU workers':>16} "
          f"{'lag p50':>8} {'lag p99':>8} {'lag max':>8} {'call p50':>9} {'call p99':>9} {'finished':>9}")


def line(row: Row, agents: int) -> str:
    cpu_pct = 100 * row.cpu_workers_s / max(row.window_s, 1e-9)
    lag, call = row.lag or [float("nan")], row.call or [float("nan")]
    return (f"{row.mode:8} {row.per_worker:>10} {row.workers:>7} {row.launch_s:>6.1f}s {row.started_s:>7.1f}s "
            f"{row.window_s:>6.0f}s {row.pss_workers_kb / 1024:>9.0f} MB {row.pss_fleet_kb / 1024:>7.0f} MB "
            f"{row.pss_workers_kb / agents:>7.0f} kB {row.cpu_workers_s:>6.1f} s = {cpu_pct:>3.0f} % "
            f"{1000 * pct(lag, 0.5):>6.0f}ms {1000 * pct(lag, 0.99):>6.0f}ms {1000 * max(lag):>6.0f}ms "
            f"{1000 * pct(call, 0.5):>7.1f}ms {1000 * pct(call, 0.99):>7.1f}ms {row.finished:>5}/{agents}"
            + "".join(f"\n         not finished: {e}" for e in row.errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 agents, 4 calls (20 s) per agent")
    parser.add_argument("--agents", type=int, default=None, help="agents per run (default 1000)")
    parser.add_argument("--threads", type=int, nargs="+", default=[50, 100], help="agents_per_worker, threads")
    parser.add_argument("--asyncio", type=int, nargs="+", default=[100, 250, 500], help="agents_per_worker, asyncio")
    parser.add_argument("--period", type=float, default=5.0, help="seconds between an agent's calls")
    parser.add_argument("--calls", type=int, default=None, help="calls per agent (default 24; --quick 4)")
    parser.add_argument("--start-timeout", type=float, default=240.0,
                        help="seconds to wait for every agent to run before sampling what runs")
    parser.add_argument("--dir", type=Path, default=None, help="where shards go (default: a temp dir)")
    args = parser.parse_args()
    agents = args.agents or (100 if args.quick else 1000)
    calls = args.calls or (4 if args.quick else 24)
    sweep = {"threads": sorted({min(k, agents) for k in args.threads}),
             "asyncio": sorted({min(k, agents) for k in args.asyncio})}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # workers inherit it: a shard and a log file per agent
    work = Path(tempfile.mkdtemp(prefix="bench-workers-", dir=args.dir))
    server, port = start_server([sys.executable, "-m", "agentshards.testing._fakellm", "--port", "{port}"])
    print(f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GB, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load "
          f"{os.getloadavg()[0]:.2f}\ncommand: {Path(sys.executable).name} {' '.join(sys.argv)}\n"
          f"{agents} agents, one durable LLM call each every {args.period:g} s x {calls} (fake LLM server, no delay, "
          f"own process); Fleet without a replica (local shards, synchronous=FULL); concurrency={agents}; "
          f"sampled every {SAMPLE_S:g} s while every agent runs", flush=True)
    rows: list[Row] = []
    try:
        print(HEADER, flush=True)
        for mode, settings in sweep.items():
            for per_worker in settings:
                row = measure(mode, agents, per_worker, args.period, calls, f"http://127.0.0.1:{port}/v1",
                              server.pid, work, args.start_timeout)
                rows.append(row)
                print(line(row, agents) + f"   (fake LLM server CPU {row.cpu_llm_pct:.0f} %)", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    best = {mode: min((r for r in rows if r.mode == mode and r.samples), key=lambda r: r.pss_workers_kb, default=None)
            for mode in sweep}
    if best["threads"] and best["asyncio"]:
        t, a = best["threads"], best["asyncio"]
        print(f"asyncio best PSS / threads best PSS: workers {a.pss_workers_kb / 1024:.0f} MB ({a.per_worker}/worker)"
              f" / {t.pss_workers_kb / 1024:.0f} MB ({t.per_worker}/worker) = "
              f"{100 * a.pss_workers_kb / t.pss_workers_kb:.0f} %; whole fleet {a.pss_fleet_kb / 1024:.0f} MB / "
              f"{t.pss_fleet_kb / 1024:.0f} MB = {100 * a.pss_fleet_kb / t.pss_fleet_kb:.0f} % (target: at most 60 %)")


if __name__ == "__main__":
    main()
