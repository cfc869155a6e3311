"""A worker process: forked by the fleet's zygote (``zygote.py``) to run ``main([_, SPEC.json])``.

It hosts the agents listed in the spec as threads (LLM-bound agents wait on I/O), or, when the target is
an ``async def`` agent, as tasks on one event loop (``arun_agent``); each agent has its own shard,
connection and log file (``.fleet/logs/<agent_id>.log``), and one result file written when its run returns.
The supervisor learns a worker died from its exit status: agents without a result file are restarted.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._base.atomic import write_json_atomic
from .._base.errors import AgentFailed, BudgetExceeded, InvalidInputs, InvalidTarget, RunMismatch

# Outcomes that running the agent again cannot change: the supervisor does not restart these.
FINAL_ERRORS = (AgentFailed, BudgetExceeded, RunMismatch, InvalidInputs, InvalidTarget)


def write_result(results_dir: Path, agent_id: str, payload: dict[str, Any]) -> None:
    """Atomically (temp file, fsync, rename): the supervisor never reads half a result."""
    write_json_atomic(results_dir / f"{agent_id}.json", payload, fsync=True)


_AGENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentshards_worker_agent", default=None)
"""The agent whose code is running: set per thread (threaded agents) or per task (async agents)."""


class _OneAgent(logging.Filter):
    """Routes an agent's log records (its thread's, or its task's) to that agent's own log file."""

    def __init__(self, agent_id: str) -> None:
        super().__init__()
        self.agent_id = agent_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.agent_id or _AGENT.get() == self.agent_id


@contextlib.contextmanager
def _agent_log(spec: dict[str, Any], agent_id: str) -> Iterator[None]:
    token = _AGENT.set(agent_id)
    logs = Path(spec["results_dir"]).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f"{agent_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OneAgent(agent_id))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        _AGENT.reset(token)


def _config(spec: dict[str, Any]) -> Any:
    from .._base.config import ShardConfig
    from .run import config_from_env

    return config_from_env(os.environ, ShardConfig(**spec["shard"]))  # this process's edge


def _failed(spec: dict[str, Any], agent_id: str, exc: Exception) -> None:
    status = "budget_exceeded" if isinstance(exc, BudgetExceeded) else "failed"
    write_result(Path(spec["results_dir"]), agent_id, {
        "status": status, "final": isinstance(exc, FINAL_ERRORS),
        "error": {"type": type(exc).__name__, "message": str(exc)[:2000],
                  "traceback": "".join(traceback.format_exception(exc))[-4000:]}})
    logging.getLogger("agentshards").error("agent %s ended with %s", agent_id, exc)


def run_one(spec: dict[str, Any], agent_id: str, inputs: dict[str, Any]) -> None:
    from .run import run_agent

    with _agent_log(spec, agent_id):
        try:
            result = run_agent(spec["target"], agent_id=agent_id, data_dir=spec["data_dir"], config=_config(spec),
                               **inputs)
            write_result(Path(spec["results_dir"]), agent_id, {"status": "succeeded", "result": result})
        except Exception as exc:
            _failed(spec, agent_id, exc)


async def arun_one(spec: dict[str, Any], agent_id: str, inputs: dict[str, Any]) -> None:
    """``run_one`` for an async agent: a task on the worker's one event loop."""
    import asyncio

    from .run import arun_agent

    with _agent_log(spec, agent_id):
        try:
            result = await arun_agent(spec["target"], agent_id=agent_id, data_dir=spec["data_dir"],
                                      config=_config(spec), **inputs)
            await asyncio.to_thread(write_result, Path(spec["results_dir"]), agent_id,
                                    {"status": "succeeded", "result": result})
        except Exception as exc:
            await asyncio.to_thread(_failed, spec, agent_id, exc)


async def _run_all(spec: dict[str, Any]) -> None:
    import asyncio

    await asyncio.gather(*(arun_one(spec, a["agent_id"], a["inputs"]) for a in spec["agents"]))


def _async_target(target: str) -> bool:
    """Whether the spec's agents are ``async def``; a target that does not import is left to run_agent,
    which records the error in each agent's result."""
    from .._core.target import is_async, target_of

    try:
        return is_async(target_of(target)[1])
    except Exception:
        return False


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    logging.getLogger().setLevel(logging.INFO)
    sys.path.insert(0, spec["app_dir"])
    if _async_target(spec["target"]):
        import asyncio

        asyncio.run(_run_all(spec))
        return 0
    threads = [threading.Thread(target=run_one, args=(spec, a["agent_id"], a["inputs"]), name=a["agent_id"])
               for a in spec["agents"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
