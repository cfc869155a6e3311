"""Per-step cost of agentshards beside its floor and its peers, all measured in this one run.

- `agent.step` vs a raw apsw `INSERT OR IGNORE` commit in the same file layout and pragmas (the floor),
  at synchronous FULL and NORMAL, ~1 KB JSON results;
- `agent.llm.chat.completions.create` against the fake server (zero delay) vs the raw HTTP round trip;
- replay of 500 recorded LLM steps: from the `run_agent` call to the first new step, hashing on,
  answers rebuilt as openai objects;
- `import agentshards` vs `python -c pass`;
- DBOS Transact on SQLite (WAL) and LangGraph + SqliteSaver (durability="sync"), driven by the scripts in
  ../shared/peerbench when the `bench` extra is installed (`pip install -e '.[bench]'`); otherwise the
  row says "not measured".

    python scripts/bench_steps.py [--steps 2000] [--reps 5] [--peerbench ../shared/peerbench]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

import agentshards
from agentshards._core.agent import Agent
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards._core.sqlite import open_connection, write_transaction

import _bench_agents

PAYLOAD = {"status": "ok", "tokens": 512, "text": "x" * 960}  # ~1 KB of JSON, like peerbench's


def floor_rate(work: Path, sync: str, n: int) -> float:
    """Raw apsw: one BEGIN IMMEDIATE / INSERT OR IGNORE / COMMIT per step, same pragmas as a shard."""
    conn = open_connection(work / f"floor-{sync}-{time.monotonic_ns()}.db", agentshards.ShardConfig(synchronous=sync))  # type: ignore[arg-type]
    conn.execute("CREATE TABLE steps(workflow_id TEXT, step_name TEXT, output_json TEXT,"
                 " UNIQUE(workflow_id, step_name))")
    body = json.dumps(PAYLOAD)
    t0 = time.perf_counter()
    for i in range(n):
        with write_transaction(conn):
            conn.execute("INSERT OR IGNORE INTO steps VALUES ('w', ?, ?)", (f"s{i}", body))
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def step_rate(work: Path, sync: str, n: int) -> float:
    """agentshards: agent.step with name claiming, input hashing, JSON round trip and the journal insert."""
    shard = agentshards.ShardConfig(synchronous=sync)  # type: ignore[arg-type]
    agent_id = f"step-{sync.lower()}-{time.monotonic_ns()}"
    journal = Journal(open_shard(work, agent_id, shard), agent_id)
    run = journal.begin_run("bench:steps", "{}", "d")
    agent = Agent(journal, run.id, agentshards.RunConfig(shard=shard), execution=run.executions)
    t0 = time.perf_counter()
    for i in range(n):
        agent.step("work", _payload, i)
    rate = n / (time.perf_counter() - t0)
    journal.close()
    return rate


def _payload(i: int) -> dict[str, Any]:
    return PAYLOAD


def llm_rates(n: int, work: Path) -> tuple[float, float]:
    with agentshards.FakeLLMServer() as llm:
        url = urlsplit(llm.base_url)
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 200}]})
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
        t0 = time.perf_counter()
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json",
                                                                             "Authorization": "Bearer k"})
            conn.getresponse().read()
        raw = n / (time.perf_counter() - t0)
        conn.close()
        config = agentshards.RunConfig(llm=agentshards.LLMConfig(api_key="k", base_url=llm.base_url))
        agentshards.run_agent(_bench_agents.chat_agent, agent_id="warm", data_dir=work / "warm", config=config, n=2)
        t0 = time.perf_counter()
        agentshards.run_agent(_bench_agents.chat_agent, agent_id="llm", data_dir=work / "llm", config=config, n=n)
        durable = n / (time.perf_counter() - t0)
    return raw, durable


def replay_ms(work: Path, n: int, reps: int) -> float:
    """From run_agent to the first new step of an open run holding n recorded LLM steps."""
    with agentshards.FakeLLMServer() as llm:
        config = agentshards.RunConfig(llm=agentshards.LLMConfig(api_key="k", base_url=llm.base_url))
        template = work / "replay-template"
        _bench_agents.INTERRUPT_AT_END = True
        with contextlib.suppress(KeyboardInterrupt):
            agentshards.run_agent(_bench_agents.chat_then_step, agent_id="rp", data_dir=template, config=config, n=n)
        _bench_agents.INTERRUPT_AT_END = False
        times = []
        for r in range(reps):
            target = work / f"replay-{r}"
            shutil.copytree(template, target)
            before = llm.request_count
            _bench_agents.FIRST_NEW_STEP.clear()
            t0 = time.perf_counter()
            agentshards.run_agent(_bench_agents.chat_then_step, agent_id="rp", data_dir=target, config=config, n=n)
            times.append((_bench_agents.FIRST_NEW_STEP[0] - t0) * 1000)
            assert llm.request_count == before, "a replay made a request"
    return statistics.median(times)


def peer(script: Path, args: list[str], match: str, env: dict[str, str]) -> float | None:
    """Run one peerbench script; return the median steps/s of the row whose config contains ``match``."""
    if not script.exists():
        return None
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if match in row.get("config", ""):
                return float(row["median"])
    print(f"  ({script.name} gave no '{match}' row: {proc.stderr.strip()[-300:]})", file=sys.stderr)
    return None


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--llm-calls", type=int, default=300)
    parser.add_argument("--replay", type=int, default=500)
    parser.add_argument("--peer-steps", type=int, default=1000)
    parser.add_argument("--peerbench", type=Path,
                        default=Path(__file__).resolve().parent.parent.parent / "shared" / "peerbench")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {'.'.join(map(str, agentshards._core.sqlite.sqlite_version()))}; medians of {args.reps}")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps: dict[str, float] = {}
        for sync in ("FULL", "NORMAL"):
            floor = statistics.median(floor_rate(work, sync, args.steps) for _ in range(args.reps))
            ours = statistics.median(step_rate(work, sync, args.steps) for _ in range(args.reps))
            steps[sync] = ours
            rows.append((f"agent.step, synchronous={sync}", f"{ours:,.0f} steps/s ({1e6 / ours:.0f} µs)",
                         f"raw apsw commit {floor:,.0f}/s ({1e6 / floor:.0f} µs): {floor / ours:.2f}x its cost"))
        raw, durable = llm_rates(args.llm_calls, work)
        rows.append(("agent.llm.chat.completions.create", f"{durable:,.0f} calls/s ({1e6 / durable:.0f} µs)",
                     f"raw HTTP round trip {raw:,.0f}/s ({1e6 / raw:.0f} µs): {raw / durable:.2f}x its cost"))
        replay = replay_ms(work, args.replay, args.reps)
        rows.append((f"replay {args.replay} recorded LLM steps", f"{replay:.1f} ms to the first new step",
                     f"{replay * 1000 / args.replay:.0f} µs per replayed step"))
        base = _bench_agents.interpreter_ms("pass", args.reps)
        imp = _bench_agents.interpreter_ms("import agentshards", args.reps)
        rows.append(("import agentshards", f"{imp - base:.0f} ms", f"python -c pass {base:.0f} ms, "
                     f"with import {imp:.0f} ms ({imp / base:.2f}x)"))

        env = dict(os.environ, PEERBENCH_DATA=str(work / "peer-data"), PEERBENCH_RESULTS=str(work / "peer-results"))
        reps = str(args.reps)
        for label, module, script, argv, match, extra_env in (
            ("DBOS 3.x on SQLite, WAL, FULL", "dbos", "bench_dbos.py", ["steps", "wal", str(args.peer_steps), reps],
             "journal=wal", {}),
            ("DBOS 3.x on SQLite, WAL, NORMAL", "dbos", "bench_dbos.py",
             ["steps", "wal-normal", str(args.peer_steps), reps], "journal=wal", {}),
            ("LangGraph + SqliteSaver, durability=sync", "langgraph", "bench_langgraph.py",
             [str(args.peer_steps), reps], "saver=sqlite durability=sync", {"LG_ONLY": "sqlite-sync"}),
        ):
            rate = peer(args.peerbench / script, argv, match, dict(env, **extra_env)) if installed(module) else None
            if rate is None:
                rows.append((label, "not measured", f"needs `pip install -e '.[bench]'` and {args.peerbench}"))
                continue
            sync = "NORMAL" if "NORMAL" in label else "FULL"
            rows.append((label, f"{rate:,.0f} steps/s ({1e6 / rate:.0f} µs)",
                         f"agentshards ({sync}) is {steps[sync] / rate:.1f}x faster"))
    width = max(len(r[0]) for r in rows)
    for name, value, baseline in rows:
        print(f"{name:<{width}}  {value:<32}  {baseline}")


if __name__ == "__main__":
    main()
