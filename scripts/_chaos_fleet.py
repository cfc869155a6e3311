"""Chaos against processes: worker SIGKILLs, seeded crash points, node loss, two owners of one data dir/prefix."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _chaos_common import CLI, S3, TESTS, Row, repeats, shard_rows, wait_for

import agentshards
from agentshards.testing._fakellm import FakeLLMServer

from agent_process import completed_steps, spawn_chat_agent, wait_ready


def worker_kills(rng: random.Random, kills: int, work: Path, s3: S3) -> Row:
    """SIGKILL a random worker every 50-400 ms while 8 agents (2 per worker) make chat calls."""
    row = Row("SIGKILL random workers")
    with FakeLLMServer(delay_s=0.02) as llm:
        env = dict(os.environ, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        fleet = agentshards.Fleet(work / "kills", env=env, app_dir=TESTS, config=agentshards.SupervisorConfig(
            agents_per_worker=2, concurrency=8, max_restarts=kills + 5, restart_backoff_s=0.02,
            restart_backoff_max_s=0.2))
        calls = max(10, kills)
        fleet.launch("sample_agents:chat_calls", {f"w{i}": {"n": calls} for i in range(8)})
        results: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: results.update(fleet.wait(timeout_s=900)))
        runner.start()
        while runner.is_alive() and row.faults < kills:
            time.sleep(rng.uniform(0.05, 0.4))
            pids = fleet.worker_pids() if runner.is_alive() else []
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    row.faults += 1
                except ProcessLookupError:
                    pass
        runner.join()
        finished = {k: v for k, v in results.items() if isinstance(v, list)}
        row.runs = len(results)
        row.errors_surfaced = len(results) - len(finished)
        row.steps_lost = sum(calls - len(v) for v in finished.values())
        row.completed_repeated = repeats(llm.requests, finished)
        row.notes.append(f"{len(llm.requests) - 8 * calls} in-flight requests repeated over {row.faults} kills")
    if not row.faults:
        row.skip("the agents finished before any worker was killed")
    return row


def crash_points(rng: random.Random, per_point: int, work: Path, s3: S3) -> Row:
    """SIGKILL a real agent process at each seeded crash point of an LLM call, then resume it."""
    row = Row("SIGKILL at seeded crash points")
    with FakeLLMServer() as llm:
        for point in ("after_intent", "after_response", "after_commit"):
            data, agent_id = work / f"cp-{point}", f"cp-{point.replace('_', '-')}"
            for _ in range(per_point):
                proc = spawn_chat_agent(data, llm.base_url, agent_id, 10,
                                        {"AGENTSHARDS_TEST_CRASH": f"{point}@{rng.randint(1, 2)}"})
                wait_ready(proc)
                proc.communicate(timeout=60)
                row.faults += proc.returncode == -signal.SIGKILL
            proc = spawn_chat_agent(data, llm.base_url, agent_id, 10)
            wait_ready(proc)
            out, _ = proc.communicate(timeout=60)
            row.runs += 1
            log = [r for r in llm.requests if r.body.get("user") == agent_id]
            row.completed_repeated += repeats(log, {agent_id: json.loads(out)})
            row.steps_lost += 10 - completed_steps(data, agent_id)
    if not row.faults:
        row.skip("no crash point was reached")
    return row


def node_loss(rng: random.Random, rounds: int, work: Path, s3: S3) -> Row:
    """`agentshards run` SIGKILLed with its whole tree, the data dir wiped, `agentshards recover` elsewhere."""
    row = Row("node loss: kill everything, wipe, recover")
    for r in range(rounds):
        replica = f"s3://{s3.bucket(f'chaos-node-{r}-{rng.randrange(10**6)}')}/fleet"
        inputs = work / f"nl-{r}.jsonl"
        inputs.write_text("".join(json.dumps({"agent_id": f"n{i}", "inputs": {"n": 10}}) + "\n" for i in range(4)))
        node1, node2 = work / f"nl-{r}-a", work / f"nl-{r}-b"
        with FakeLLMServer(delay_s=0.05) as llm:
            env = dict(s3.env, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
            sup = subprocess.Popen([*CLI, "run", "sample_agents:chat_calls", "--inputs", str(inputs), "--data-dir",
                                    str(node1), "--replica", replica, "--app-dir", str(TESTS), "--lease-ttl", "2"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = rng.randint(8, 30)
            wait_for(lambda: llm.request_count >= target or sup.poll() is not None, 60, 0.005)  # noqa: B023
            sup.send_signal(signal.SIGKILL)
            sup.wait()
            row.faults += 1
            # workers and Litestream die with the supervisor (parent-death signal): poll for it
            wait_for(lambda: not _holders(node1), 10)  # noqa: B023
            local = sum(completed_steps(node1, f"n{i}") for i in range(4))
            shutil.rmtree(node1)
            before = llm.request_count
            deadline = time.monotonic() + 30
            while True:  # --take-over watches the dead node's lease (2 s TTL + margin), then takes it
                out = subprocess.run([*CLI, "recover", "--replica", replica, "--data-dir", str(node2),
                                      "--take-over", "--app-dir", str(TESTS)], env=env, capture_output=True,
                                     text=True, timeout=300)
                if out.returncode == 0 or "lease" not in out.stderr or time.monotonic() > deadline:
                    break
                row.errors_surfaced += 1  # refused while the old owner's lease is live: expected
                time.sleep(0.5)
            row.runs += 1
            if out.returncode != 0:
                row.steps_lost += 40
                row.notes.append(f"recover failed: {out.stderr.strip()[-300:]}")
                continue
            for i in range(4):  # an agent that finished before the kill is not re-run: its replica must hold it
                if not (node2 / f"n{i}.db").exists():
                    agentshards.restore_agent(f"n{i}", node2, replica, env=s3.env)
            finished = sum(completed_steps(node2, f"n{i}") for i in range(4))
            row.steps_lost += 40 - finished
            row.notes.append(f"round {r}: {local} steps done locally at the kill; recovery made "
                             f"{llm.request_count - before - (40 - local)} requests beyond those "
                             f"(local-durability steps not yet replicated, or in flight)")
    return row


def _holders(data_dir: Path) -> list[int]:
    """Processes that still have a file under data_dir open."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(str(data_dir) in os.readlink(fd) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def dual_owners(rng: random.Random, work: Path, s3: S3) -> Row:
    """A second supervisor on a locked data dir, and a second node asking for an agent a live node owns, are both
    refused."""
    row = Row("two supervisors, two nodes")
    first = agentshards.Fleet(work / "dual", app_dir=TESTS)
    first.launch("sample_agents:two_steps", {"a": {"x": 1}})
    row.runs += 1
    try:
        agentshards.Fleet(work / "dual", app_dir=TESTS).launch("sample_agents:two_steps", {"b": {"x": 1}})
        row.steps_lost += 1
        row.notes.append("a second supervisor was allowed on a locked data dir")
    except agentshards.DataDirLocked:
        row.errors_surfaced += 1
    first.close()
    replica = f"s3://{s3.bucket(f'chaos-dual-{rng.randrange(10**6)}')}/p"
    node_a = agentshards.Fleet(work / "dual-a", replica=replica, env=s3.env, app_dir=TESTS)
    node_a.launch("sample_agents:two_steps", {"a": {"x": 1}})
    row.runs += 1
    node_b = agentshards.Fleet(work / "dual-b", replica=replica, env=s3.env, app_dir=TESTS)
    node_b.launch("sample_agents:two_steps", {"a": {"x": 1}})  # refused per agent: its outcome in wait()
    outcome = node_b.wait(timeout_s=60)["a"]
    if isinstance(outcome, agentshards.AgentOwned):
        row.errors_surfaced += 1
    else:
        row.steps_lost += 1
        row.notes.append(f"a second node ran an agent a live node owns: {outcome!r}"[:300])
    node_a.close()
    return row


def acked_node_loss(rng: random.Random, rounds: int, work: Path, s3: S3) -> Row:
    """A replicated agent process SIGKILLed after k acknowledged steps, its data dir wiped, its shard restored
    from S3: every acknowledged `replicated` step must be there. The same with `local` steps measures what
    asynchronous replication loses (Litestream syncs every second)."""
    row = Row("node loss: acknowledged steps vs restore")
    local_lost: list[int] = []
    for r in range(rounds):
        for durability in ("replicated", "local"):
            replica = f"s3://{s3.bucket(f'chaos-ack-{durability[:3]}-{r}-{rng.randrange(10**6)}')}/x"
            data, agent_id = work / f"ack-{durability}-{r}", f"ack-{durability[:3]}"
            code = ("import sys, agentshards, sample_agents; agentshards.run_agent(sample_agents.acked_steps, "
                    "agent_id=sys.argv[1], data_dir=sys.argv[2], replica=sys.argv[3], n=400, durability=sys.argv[4])")
            proc = subprocess.Popen([sys.executable, "-c", code, agent_id, str(data), replica, durability],
                                    env=dict(s3.env, PYTHONPATH=str(TESTS)), stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            target, acked = rng.randint(5, 150), -1
            for line in proc.stdout:
                acked = int(line.split()[1])
                if acked + 1 >= target:
                    break
            proc.kill()  # SIGKILL; its Litestream dies with it (parent-death signal)
            proc.wait()
            row.faults += 1
            wait_for(lambda: not _holders(data), 10)  # noqa: B023 - its Litestream got SIGTERM: let it go
            shutil.rmtree(data)
            row.runs += 1
            try:
                path = agentshards.restore_agent(agent_id, work / f"ack-back-{durability}-{r}", replica, env=s3.env)
            except agentshards.AgentShardsError as exc:
                path = None
                row.notes.append(f"{durability}: restore failed after the kill: {exc}"[:300])
            rows, ok = shard_rows(path) if path else ([], True)
            row.corrupt_restores += not ok
            missing = max(0, acked + 1 - len(rows))
            if durability == "replicated":
                row.steps_lost += missing
            else:
                local_lost.append(missing)
    if local_lost:
        row.notes.append(f"local durability: {sum(local_lost)} acknowledged steps missing from the replica over "
                         f"{len(local_lost)} node losses (max {max(local_lost)}; ~1 s of steps at the kill is "
                         f"the expected loss with a 1 s sync interval)")
    return row
