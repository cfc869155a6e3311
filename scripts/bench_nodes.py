"""Nodes sharing one prefix: what ownership costs in S3 requests, and how fast survivors take over.

Three (--nodes) `agentshards node` process trees, each with its own data dir and its own counting proxy in
front of one loopback S3 server (moto), so every request is counted per node and classified by key:
ownership (`nodes/`, `manifest/`: leases, scans, claims, hand-backs) or Litestream (`agents/`).

1. idle: the nodes run with no agents for --idle seconds: ownership requests per node per hour.
2. busy: --agents agents are submitted; once every one is running (its generation live), the nodes run for
   --busy seconds with one LLM step per agent every --period seconds (fake LLM server): ownership requests
   per node per hour and per agent per minute, beside Litestream's own.
3. take-over: the node owning the most agents is SIGKILLed (its whole process group) and its data dir
   deleted; measured from the kill: its lease expired and the first of its agents claimed, every one of
   them claimed, every one running again (live on its new generation). Target: within TTL + 60 s.

    python scripts/bench_nodes.py [--agents 1000] [--nodes 3] [--ttl 30] [--idle 60] [--busy 120]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import boto3
from bench_replication import loopback_s3_env, start_moto

from agentshards import FakeLLMServer, submit

from fault_proxy import FaultProxy

SCRIPTS = Path(__file__).resolve().parent


class Manifest:
    """The entries as the bench polls them: one LIST and a GET only per entry whose ETag changed (as nodes
    scan). Reading every entry each poll took minutes per poll on a loaded loopback server, so the take-over
    timings lagged the nodes' own logs by minutes."""

    def __init__(self, replica: str, env: dict[str, str]) -> None:
        from agentshards._fleet.node import EntryCache
        from agentshards._fleet.run import check_replica

        target, store = check_replica(replica, env)
        self._cache = EntryCache(store, target)

    def entries(self) -> list[Any]:
        return self._cache.scan()


def cpu_times() -> tuple[int, int]:
    """The machine's (busy, total) CPU jiffies since boot, from /proc/stat: how saturated a phase ran."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(since: tuple[int, int]) -> str:
    now = cpu_times()
    return f"{100 * (now[0] - since[0]) / max(1, now[1] - since[1]):.0f} %"


def proc_cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classify(line: str) -> str:
    """A request line (``PUT /bench/fleet/nodes/node0.json``, ``GET /bench?list-type=2&prefix=fleet%2Fmanifest``)
    by the part of the prefix it touches."""
    line = line.replace("%2F", "/")
    return "ownership" if any(f"fleet/{part}" in line for part in ("nodes", "manifest", "lease")) else "litestream"


def counts(proxy: FaultProxy) -> Counter[str]:
    return Counter(classify(line) for line in list(proxy.request_lines))


def kinds(lines: list[str]) -> str:
    """The ownership requests by kind (method and key with ids blanked), most frequent first."""
    import re

    shapes = Counter(re.sub(r"(nodes|manifest)/[^/?& ]+", r"\1/*", re.sub(r"&continuation-token=[^& ]*", "",
                                                                            line.replace("%2F", "/")))
                     for line in lines if classify(line) == "ownership")
    return "; ".join(f"{n} x {shape}" for shape, n in shapes.most_common(6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--busy", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    root = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
    moto, port = start_moto()
    proxies = [FaultProxy(port) for _ in range(args.nodes)]
    direct = loopback_s3_env(f"http://127.0.0.1:{port}")
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
    replica = "s3://bench/fleet"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{datetime.now(UTC):%Y-%m-%d}; {args.nodes} nodes, lease TTL {args.ttl:g} s, {args.agents} agents, one "
          f"LLM step per agent every {args.period:g} s (fake server); S3 = moto on 127.0.0.1", flush=True)
    llm = FakeLLMServer().start()
    try:
        def start(i: int) -> None:
            name = f"node{i}"
            env = dict(loopback_s3_env(proxies[i].endpoint), OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - the child's
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "agentshards", "-v", "node", "--replica", replica,
                 "--data-dir", str(root / name),
                 "--app-dir", str(SCRIPTS), "--node-id", name, "--lease-ttl", str(args.ttl),
                 "--capacity", str(args.agents), "--concurrency", str(args.agents), "--agents-per-worker", "50"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()

        for i in range(args.nodes):
            start(i)
        time.sleep(2.0)
        before = [counts(p) for p in proxies]
        time.sleep(args.idle)
        idle = [counts(p)["ownership"] - b["ownership"] for p, b in zip(proxies, before, strict=True)]
        print(f"idle: ownership requests per node per hour: "
              f"{', '.join(f'{n * 3600 / args.idle:.0f}' for n in idle)}", flush=True)

        calls = int((args.busy + 600) / args.period)
        started = time.monotonic()
        submit("_bench_agents:periodic_llm", {f"a{i:05d}": {"period": args.period, "calls": calls}
                                              for i in range(args.agents)}, replica, env=direct)
        watch = Manifest(replica, direct)
        while True:
            entries = watch.entries()
            running = sum(e.node is not None and e.live == e.generation for e in entries)
            if running == args.agents:
                break
            if time.monotonic() - started > 1200:
                raise SystemExit(f"only {running} of {args.agents} agents running after 20 minutes")
            time.sleep(2.0)
        ramp = time.monotonic() - started
        by_node = Counter(e.node for e in entries)
        print(f"ramp-up: {args.agents} agents submitted, claimed and running in {ramp:.1f} s "
              f"({', '.join(f'{n}: {c}' for n, c in sorted(by_node.items()))})", flush=True)
        time.sleep(args.ttl * 2 / 3)  # two scans of every node see the last agents go live before the count starts
        before = [counts(p) for p in proxies]
        marks = [len(p.request_lines) for p in proxies]
        cpu = cpu_times()
        time.sleep(args.busy)
        cpu_busy = busy_share(cpu)
        after = [counts(p) for p in proxies]
        busy_lines = [line for p, m in zip(proxies, marks, strict=True) for line in list(p.request_lines)[m:]]
        own = [a["ownership"] - b["ownership"] for a, b in zip(after, before, strict=True)]
        lite = [a["litestream"] - b["litestream"] for a, b in zip(after, before, strict=True)]
        minutes = args.busy / 60
        print(f"busy: ownership requests per node per hour: {', '.join(f'{n / minutes * 60:.0f}' for n in own)}; "
              f"per agent per minute: {sum(own) / args.agents / minutes:.4f} (target <= 0.1); Litestream's own: "
              f"{sum(lite) / args.agents / minutes:.2f} per agent per minute; the machine's CPU {cpu_busy} busy",
              flush=True)
        print(f"busy: ownership requests by kind, all nodes: {kinds(busy_lines)}", flush=True)

        victim = by_node.most_common(1)[0][0]
        lost = {e.agent_id for e in entries if e.node == victim}
        os.killpg(procs[victim].pid, signal.SIGKILL)
        killed = time.monotonic()
        cpu = cpu_times()
        moto_cpu, own_cpu = proc_cpu_s(moto.pid), time.process_time()
        node_cpu = {name: proc_cpu_s(p.pid) for name, p in procs.items() if name != victim}
        procs[victim].wait()
        shutil.rmtree(root / victim, ignore_errors=True)
        first = all_claimed = None
        while True:
            now = watch.entries()
            mine = [e for e in now if e.agent_id in lost]
            claimed = [e for e in mine if e.node not in (victim, None)]
            if claimed and first is None:
                first = time.monotonic() - killed
            if len(claimed) == len(lost) and all_claimed is None:
                all_claimed = time.monotonic() - killed
            if all(e.node not in (victim, None) and e.live == e.generation for e in mine):
                back = time.monotonic() - killed
                break
            if time.monotonic() - killed > args.ttl + 600:
                raise SystemExit(f"{len(claimed)} of {len(lost)} agents claimed {args.ttl + 600:.0f} s after the kill")
            time.sleep(0.5)
        verdict = "met" if back <= args.ttl + 60 else "MISSED"
        moto_share = (proc_cpu_s(moto.pid) - moto_cpu) / back
        own_share = (time.process_time() - own_cpu) / back
        node_share = ", ".join(f"{(proc_cpu_s(procs[n].pid) - c) / back:.0%}" for n, c in node_cpu.items())
        survivors = sum(p.poll() is None for name, p in procs.items() if name != victim)  # one may have fenced
        print(f"take-over of {len(lost)} agents of {victim} by {survivors} survivors: first claimed "
              f"{first:.1f} s after the kill (lease TTL {args.ttl:g} s + margin {args.ttl / 6:.1f} s + a scan), all "
              f"claimed {all_claimed:.1f} s, all running again {back:.1f} s (target TTL + 60 s = "
              f"{args.ttl + 60:.0f} s: {verdict}); meanwhile the machine's CPU was {busy_share(cpu)} busy, the S3 "
              f"server (one Python process) used {moto_share:.0%} of a core, this script (proxies, polling) "
              f"{own_share:.0%}, each survivor's main process (claims, restores, supervisor) {node_share}",
              flush=True)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        llm.stop()
        for proxy in proxies:
            proxy.close()
        moto.terminate()
        moto.wait()
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
