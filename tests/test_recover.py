"""Node loss for a whole fleet: SIGKILL the supervisor's process tree, wipe the node, recover elsewhere.

Runs the real CLI (`agentshards run` / `recover`) in subprocesses against moto S3 on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentshards import FakeLLMServer, RunConfig, inspect_agent, list_fleet, recover
from agentshards._core.codec import digest
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards._core.target import resolve
from agentshards._fleet.run import code_fingerprint, start_replication
from agentshards._replication.manifest import ManifestEntry
from agentshards.testing._fakellm import serial_of

from agent_process import TESTS_DIR

CLI = [sys.executable, "-m", "agentshards"]
# a dead node's lease refuses a plain recover however old it is; recover --take-over watches it for TTL + margin
AGENTS, CALLS, TTL = 4, 10, 3.0


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def _wait_for(condition: object, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.02)


def test_fleet_node_loss_and_recovery(tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    replica = f"s3://{bucket}/fleet"
    inputs = tmp_path / "agents.jsonl"
    inputs.write_text("".join(json.dumps({"agent_id": f"n{i}", "inputs": {"n": CALLS}}) + "\n" for i in range(AGENTS)))
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    with FakeLLMServer(delay_s=0.05) as llm:
        env = dict(s3_env, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        supervisor = subprocess.Popen([*CLI, "run", "sample_agents:chat_calls", "--inputs", str(inputs),
                                       "--data-dir", str(node1), "--replica", replica, "--agents-per-worker", "2",
                                       "--app-dir", str(TESTS_DIR), "--lease-ttl", str(TTL)],
                                      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for(lambda: llm.request_count >= 16)
        status = json.loads((node1 / ".fleet" / "status.json").read_text())
        children = [a["worker_pid"] for a in status["agents"].values() if a["worker_pid"]]
        children.append(int((node1 / "litestream.pid").read_text()))
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in children), 15)  # workers and Litestream died with it
        local_steps = {f"n{i}": len(inspect_agent(node1, f"n{i}").runs[-1].steps) for i in range(AGENTS)}
        shutil.rmtree(node1)  # the node is gone

        refused = subprocess.run([*CLI, "recover", "--replica", replica, "--data-dir", str(node2),
                                  "--app-dir", str(TESTS_DIR), "--lease-ttl", str(TTL)],
                                 env=env, capture_output=True, text=True, timeout=60)
        # however old the lease (its expires_at is another machine's clock), only an explicit take-over proceeds
        assert refused.returncode == 1 and "owns it" in refused.stderr and "--take-over" in refused.stderr
        before, started = llm.request_count, time.monotonic()
        recovered = subprocess.run([*CLI, "recover", "--replica", replica, "--data-dir", str(node2), "--take-over",
                                    "--app-dir", str(TESTS_DIR)], env=env, capture_output=True, text=True, timeout=180)
        assert recovered.returncode == 0, recovered.stderr
        assert time.monotonic() - started >= TTL + TTL / 6  # it watched the dead node's lease for TTL + margin first
        assert f"recovered {AGENTS} unfinished agents" in recovered.stdout
        assert f"{AGENTS} agents finished ok, 0 failed" in recovered.stdout
        after = llm.request_count - before

    for i in range(AGENTS):
        run = inspect_agent(node2, f"n{i}").runs[-1]
        assert run.run.status == "succeeded" and len(run.steps) == CALLS
        ids = [json.loads(s.output_json)["id"] for s in run.steps]
        assert len({serial_of(x) for x in ids}) == CALLS
    repeats = after - (AGENTS * CALLS - sum(local_steps.values()))
    print(f"\nlocal steps at the kill {sum(local_steps.values())}, requests after recovery {after}, "
          f"repeated (committed locally, not yet replicated, or in flight) {repeats}", file=sys.stderr)
    assert 0 <= repeats <= sum(local_steps.values()) + AGENTS
    assert [(e.agent_id, e.status) for e in list_fleet(replica, env=s3_env)] == [
        (f"n{i}", "succeeded") for i in range(AGENTS)]


def test_recover_takes_over_a_prefix_written_before_generations(tmp_path: Path) -> None:
    """Entries without an owner or generation and replicas at the agent prefix itself (the layout before
    nodes) are claimed one generation up, restored from the prefix itself, replicated to generation 1, and
    handed back when they end; an out-of-date code fingerprint is written again."""
    replica, data, target = str(tmp_path / "replica"), tmp_path / "node1", "sample_agents:local_steps"
    fingerprint = code_fingerprint(resolve(target))
    replication = start_replication(data, replica, RunConfig(), os.environ)
    try:
        for agent_id, recorded in (("same", fingerprint), ("changed", "an-older-fingerprint")):
            journal = Journal(open_shard(data, agent_id, RunConfig().shard), agent_id)
            replication.litestream.register(agent_id)
            inputs = json.dumps({"n": 2}, sort_keys=True, separators=(",", ":"))
            run = journal.begin_run(target, inputs, digest(inputs))
            journal.close()
            replication.publish(ManifestEntry(agent_id, "running", target, run.input_digest, run.id, recorded, 0,
                                              time.time(), inputs_json=inputs))
            replication.litestream.sync(agent_id, 30)
    finally:
        replication.litestream.stop()
    shutil.rmtree(data)  # the node is gone
    assert recover(tmp_path / "node2", replica, app_dir=TESTS_DIR) == {"same": 2, "changed": 2}
    assert sorted((e.agent_id, e.status, e.node, e.generation, e.live, e.code_fingerprint == fingerprint)
                  for e in list_fleet(replica)) == [
        ("changed", "succeeded", None, 1, 1, True), ("same", "succeeded", None, 1, 1, True)]
    assert list((tmp_path / "replica" / "agents" / "same" / "g1").rglob("*.ltx"))  # its own generation's path
    legacy = tmp_path / "replica" / "agents" / "same" / "ltx"
    assert not [p for p in legacy.rglob("*") if p.is_file()]  # generation 0 was collected
