"""The README's demo: a small fleet on embedded defaults (local replica, fake LLM, no API key, no network).

Agents run in worker processes with their shards replicated by Litestream to a local directory; one
worker is SIGKILLed and restarted; then the data dir is deleted (node loss), every agent is restored
from the replica and run again: no completed LLM call is ever made twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._base.config import LLMConfig, RunConfig, SupervisorConfig
from .._base.errors import InvalidInputs
from .._core.agent import Agent
from .._fleet.fleet import Fleet
from .._fleet.run import run_agent
from .._replication.restore import list_fleet, restore_agents
from ..testing._fakellm import FakeLLMServer

TOPICS = ("sqlite", "litestream", "s3", "durable execution")


def search_notes(topic: str, plan: str) -> dict[str, Any]:
    """Stand-in for a tool call (web search, database query): cheap, deterministic, recorded as a step."""
    return {"topic": topic, "sources": [f"https://example.org/{topic.replace(' ', '-')}/{i}" for i in range(3)],
            "plan_words": len(plan.split())}


def researcher(agent: Agent, topic: str) -> dict[str, Any]:
    """Plan with the LLM, 'search' in a plain step, then draft with the LLM."""
    plan = agent.llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Plan research on {topic}"}])
    notes = agent.step("search", search_notes, topic, plan.choices[0].message.content or "")
    draft = agent.llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Write up {topic} from {notes['sources']}"}])
    return {"topic": topic, "draft": draft.choices[0].message.content, "llm_ids": [plan.id, draft.id]}


def run_demo(data_dir: str | os.PathLike[str], *, replica: str | None = None, agents: int = 4,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """A fleet of researchers in worker processes against a fake LLM, replicated to ``replica``: one worker
    is SIGKILLed mid-run and restarted, then the whole node is lost (data dir deleted) and ``recover``
    brings every agent back from the replica. Completed LLM calls are never paid for twice."""
    data = Path(data_dir).resolve()
    replica = replica or str(data.parent / "replica")
    ids = [f"researcher-{i + 1:03d}" for i in range(agents)]
    _refuse_foreign(data)
    earlier = sorted(p.name for p in data.glob("researcher-*.db")) if data.is_dir() else []
    if earlier:
        echo(f"reusing an earlier demo's state in {data} ({len(earlier)} shards): finished agents return their "
             "recorded results without a single LLM request")
    plan = {agent_id: {"topic": TOPICS[i % len(TOPICS)]} for i, agent_id in enumerate(ids)}
    with FakeLLMServer(delay_s=0.05) as llm:
        env = dict(os.environ, OPENAI_API_KEY="fake-key", OPENAI_BASE_URL=llm.base_url)
        fleet = Fleet(data, replica, agents_per_worker=2, env=env,
                      config=SupervisorConfig(agents_per_worker=2, restart_backoff_s=0.2))
        fleet.launch(researcher, plan)
        echo(f"launched {agents} agents in {(agents + 1) // 2} worker processes; shards in {data}, "
             f"replicated to {replica}")
        done = threading.Event()
        killer = threading.Thread(target=_kill_one_worker, args=(fleet, llm, echo, done), daemon=True)
        killer.start()
        try:
            results = fleet.wait()
        finally:
            done.set()
            killer.join()
        restarts = sum(state.restarts for state in fleet.status().values())
        first = llm.request_count
        echo(f"all {agents} finished ({restarts} agent restarts); LLM requests: {first}")
        calls = 2 * sum(1 for agent_id in ids if agent_id not in earlier_done(earlier))
        if first > calls:
            echo(f"  {first} requests for {calls} LLM calls: the calls in flight when the worker was killed were "
                 "sent again after its restart (never recorded, so never answered twice from the journal); "
                 "every completed call was replayed from its shard")

        shutil.rmtree(data)
        echo(f"node loss: removed {data}")
        echo("fleet in the replica: " + ", ".join(f"{e.agent_id}={e.status}" for e in list_fleet(replica, env=env)))
        restored = restore_agents(ids, data, replica, env=env)
        failed = {k: v for k, v in restored.items() if isinstance(v, Exception)}
        if failed:
            raise next(iter(failed.values()))
        for agent_id in ids:
            again = run_agent(researcher, agent_id=agent_id, data_dir=data, replica=replica,
                              config=RunConfig(llm=LLMConfig(api_key="fake-key", base_url=llm.base_url)),
                              topic=plan[agent_id]["topic"])
            assert again == results[agent_id], "a restored agent must return its recorded result"
        replay = llm.request_count - first
    echo(f"restored {len(restored)} agents from the replica; LLM requests when running them again: {replay}")
    echo("next, try:\n"
         f"  agentshards status --data-dir {data}\n"
         f"  agentshards inspect {ids[0]} --data-dir {data}\n"
         f"  agentshards spend --data-dir {data}\n"
         f"  agentshards fleet --replica {replica}\n"
         f"  agentshards dashboard --data-dir {data}")
    return {"results": results, "requests_first_pass": first, "requests_replay": replay, "restarts": restarts}


def earlier_done(earlier: list[str]) -> set[str]:
    """Agents whose shard an earlier demo left: they replay, so they make no request of their own."""
    return {name[: -len(".db")] for name in earlier}


def _refuse_foreign(data: Path) -> None:
    """The demo deletes its data dir to show node loss: never do that to a directory of other agents."""
    if data.exists() and not data.is_dir():
        raise InvalidInputs(f"{data} exists and is not a directory", hint="pass --data-dir a new directory")
    if data.is_dir():
        ours = ("researcher-", ".", "agentshards.lock", "litestream")  # shards, state dirs, lock, Litestream files
        foreign = sorted(p.name for p in data.iterdir() if not p.name.startswith(ours))
        if foreign:
            raise InvalidInputs(f"{data} holds files the demo did not write ({', '.join(foreign[:5])})",
                                hint="the demo deletes its data dir to show node loss: pass --data-dir a new "
                                     "directory")


def _kill_one_worker(fleet: Fleet, llm: FakeLLMServer, echo: Callable[[str], None], done: threading.Event) -> None:
    """Show a crash: SIGKILL one worker once the fleet made a few LLM calls (if it is still running)."""
    while not done.wait(0.01):
        pids = fleet.worker_pids()
        if llm.request_count >= 3 and pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[0], signal.SIGKILL)
                echo(f"SIGKILLed worker {pids[0]} mid-run; the supervisor restarts its agents from their journals")
            return
