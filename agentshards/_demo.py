"""The README's demo: a few research agents on embedded defaults (local files, fake LLM, no network).

It runs each agent, then runs them all again to show that a finished agent replays from its shard and
makes no LLM request at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._agent import Agent
from ._config import LLMConfig, RunConfig
from ._fakellm import FakeLLMServer
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


def run_demo(data_dir: str | os.PathLike[str], *, agents: int = 3,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``agents`` researchers twice against a fake LLM; return results and request counts."""
    data = Path(data_dir)
    with FakeLLMServer() as llm:
        config = RunConfig(llm=LLMConfig(api_key="fake-key", base_url=llm.base_url))
        results: dict[str, Any] = {}
        for i in range(agents):
            agent_id = f"researcher-{i + 1:03d}"
            topic = TOPICS[i % len(TOPICS)]
            results[agent_id] = run_agent(researcher, agent_id=agent_id, data_dir=data, config=config, topic=topic)
            echo(f"{agent_id}: {topic!r} done -> {data / (agent_id + '.db')}")
        first = llm.request_count
        for i in range(agents):
            agent_id = f"researcher-{i + 1:03d}"
            again = run_agent(researcher, agent_id=agent_id, data_dir=data, config=config,
                              topic=TOPICS[i % len(TOPICS)])
            assert again == results[agent_id], "replay must return the recorded result"
        replay = llm.request_count - first
    echo(f"LLM requests: {first} on the first pass, {replay} when running the finished agents again")
    return {"results": results, "requests_first_pass": first, "requests_replay": replay}
