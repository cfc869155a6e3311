"""The README's demo: a few research agents on embedded defaults (local replica, fake LLM, no network).

It runs each agent with its shard replicated by Litestream to a local directory, deletes the data dir
(node loss), restores every agent from the replica and runs them again: no LLM request is made twice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._agent import Agent
from ._config import LLMConfig, RunConfig
from ._fakellm import FakeLLMServer
from ._restore import list_fleet, restore_agents
from ._run import run_agent

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


def run_demo(data_dir: str | os.PathLike[str], *, replica: str | None = None, agents: int = 3,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``agents`` researchers against a fake LLM with their shards replicated to ``replica``; then
    lose the data dir, restore every agent from the replica and run them again: zero LLM requests."""
    data = Path(data_dir)
    replica = replica or str(data.parent / "replica")
    ids = [f"researcher-{i + 1:03d}" for i in range(agents)]
    topics = {agent_id: TOPICS[i % len(TOPICS)] for i, agent_id in enumerate(ids)}
    with FakeLLMServer() as llm:
        config = RunConfig(llm=LLMConfig(api_key="fake-key", base_url=llm.base_url))
        results: dict[str, Any] = {}
        for agent_id in ids:
            results[agent_id] = run_agent(researcher, agent_id=agent_id, data_dir=data, config=config,
                                          replica=replica, topic=topics[agent_id])
            echo(f"{agent_id}: {topics[agent_id]!r} done -> {data / (agent_id + '.db')}")
        first = llm.request_count
        echo(f"LLM requests: {first}; shards replicated to {replica}")

        shutil.rmtree(data)
        echo(f"node loss: removed {data}")
        fleet = list_fleet(replica)
        echo("fleet in the replica: " + ", ".join(f"{e.agent_id}={e.status}" for e in fleet))
        restored = restore_agents([e.agent_id for e in fleet], data, replica)
        failed = {k: v for k, v in restored.items() if isinstance(v, Exception)}
        if failed:
            raise next(iter(failed.values()))
        for agent_id in ids:
            again = run_agent(researcher, agent_id=agent_id, data_dir=data, config=config, replica=replica,
                              topic=topics[agent_id])
            assert again == results[agent_id], "a restored agent must return its recorded result"
        replay = llm.request_count - first
    echo(f"restored {len(restored)} agents from the replica; LLM requests when running them again: {replay}")
    return {"results": results, "requests_first_pass": first, "requests_replay": replay}
