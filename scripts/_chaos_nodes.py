"""Chaos across nodes: three `agentshards node` process trees on one prefix, one of them lost, paused or cut off.

The other two must take its agents over by themselves (no command), every agent must finish with all its
steps, each taken agent's live replica must restore, pass ``integrity_check`` and hold one run, and a
paused node must stop by itself when it wakes, without publishing anything.
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from functools import partial
from pathlib import Path

from _chaos_common import S3, Row, shard_rows, wait_for
from node_process import Nodes

import agentshards
from agentshards import FakeLLMServer

from fault_proxy import FaultProxy

TTL = 4.0
FAULTS = ("kill", "pause", "partition")
AGENTS, CALLS = 12, 8


def node_faults(rng: random.Random, rounds: int, work: Path, s3: S3) -> Row:
    row = Row("nodes: one of three killed, paused, cut off")
    for r in range(rounds):
        fault = FAULTS[r % len(FAULTS)]
        replica = f"s3://{s3.bucket(f'chaos-nodes-{r}-{rng.randrange(10**6)}')}/fleet"
        proxy = FaultProxy(s3.port)
        with FakeLLMServer(delay_s=0.05) as llm:
            env = dict(s3.env, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
            agentshards.submit("sample_agents:chat_calls", {f"c{i}": {"n": CALLS} for i in range(AGENTS)}, replica,
                               env=env)
            nodes = Nodes(work / f"nodes-{r}", replica, env, ttl=TTL)
            (work / f"nodes-{r}").mkdir(parents=True, exist_ok=True)
            try:
                nodes.start("victim", capacity=AGENTS // 2, env=dict(env, AWS_ENDPOINT_URL_S3=proxy.endpoint))
                if not wait_for(partial(_owned_live, replica, env, "victim"), 60, 0.1):
                    row.notes.append(f"round {r}: the victim never ran an agent: {nodes.log('victim')[-300:]}")
                    continue
                for name in ("s1", "s2"):
                    nodes.start(name, capacity=AGENTS)
                calls = rng.randint(10, 40)
                wait_for(lambda: llm.request_count >= calls, 30, 0.01)  # noqa: B023
                taken = {e.agent_id for e in agentshards.list_fleet(replica, env=env) if e.node == "victim"}
                victim = nodes.procs["victim"]
                row.faults += 1
                if fault == "kill":
                    nodes.kill("victim")
                    victim.wait()
                    shutil.rmtree(work / f"nodes-{r}" / "victim")
                elif fault == "pause":
                    nodes.kill("victim", signal.SIGSTOP)
                    wait_for(partial(_owned_by_none_of, replica, env, "victim"), 60, 0.2)
                    time.sleep(TTL)
                    nodes.kill("victim", signal.SIGCONT)
                    if not wait_for(lambda: victim.poll() is not None, 30, 0.1):  # noqa: B023
                        row.steps_lost += 1
                        row.notes.append(f"round {r}: the paused node did not stop by itself after waking")
                else:
                    proxy.outage()
                    if not wait_for(lambda: victim.poll() is not None, TTL + 5, 0.1):  # noqa: B023
                        row.steps_lost += 1
                        row.notes.append(f"round {r}: the cut-off node outlived its lease")
                done = wait_for(partial(_all_succeeded, replica, env), 120, 0.2)
                row.runs += 1
                entries = {e.agent_id: e for e in agentshards.list_fleet(replica, env=env)}
                if not done:
                    unfinished = [a for a, e in entries.items() if e.status != "succeeded"]
                    row.steps_lost += len(unfinished) * CALLS
                    row.notes.append(f"round {r} ({fault}): not finished: {unfinished[:5]}")
                if fault != "kill" and victim.returncode == 0:
                    row.steps_lost += 1
                    row.notes.append(f"round {r} ({fault}): the victim exited 0 after losing its lease")
                if "Traceback" in nodes.log("victim"):
                    row.notes.append(f"round {r} ({fault}): a traceback in the victim's log")
                    row.steps_lost += 1
                check = work / f"nodes-{r}-check"
                for agent_id in sorted(taken):
                    try:
                        path = agentshards.restore_agent(agent_id, check, replica, env=s3.env)
                    except agentshards.AgentShardsError as exc:
                        row.corrupt_restores += 1
                        row.notes.append(f"round {r}: {agent_id} does not restore: {exc}"[:300])
                        continue
                    rows, ok = shard_rows(path)
                    row.corrupt_restores += not ok
                    row.steps_lost += max(0, CALLS - len(rows))
                row.notes.append(f"round {r} ({fault}): {len(taken)} agents taken over; "
                                 f"{llm.request_count - AGENTS * CALLS} requests beyond one per call (local "
                                 f"durability: calls not yet replicated, or in flight)")
            finally:
                nodes.stop_all()
                proxy.close()
    return row


def _owned_live(replica: str, env: dict[str, str], node: str) -> int:
    return sum(e.node == node and e.live > 0 for e in agentshards.list_fleet(replica, env=env))


def _owned_by_none_of(replica: str, env: dict[str, str], node: str) -> bool:
    return not any(e.node == node for e in agentshards.list_fleet(replica, env=env))


def _all_succeeded(replica: str, env: dict[str, str]) -> bool:
    return all(e.status == "succeeded" for e in agentshards.list_fleet(replica, env=env))

