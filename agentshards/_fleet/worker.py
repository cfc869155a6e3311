"""A worker process: forked by the fleet's zygote (``zygote.py``) to run ``main([_, SPEC.json])``.

It hosts the agents listed in the spec as threads (LLM-bound agents wait on I/O), each with its own
shard, connection and log file (``.fleet/logs/<agent_id>.log``), and writes one result file per agent
when that agent's ``run_agent`` returns.
The supervisor learns a worker died from its exit status: agents without a result file are restarted.

With a replica, the spec also names the supervisor's confirmation socket (``replicated`` steps are confirmed
there, ``confirm.py``) and its lease-deadline file (``fence_file.py``): past that deadline every commit and
LLM request raises Fenced, and the worker exits at once with FENCED_EXIT, writing no result file, as if killed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._base.atomic import write_json_atomic
from .._base.errors import AgentFailed, BudgetExceeded, Draining, Fenced, InvalidInputs, InvalidTarget, RunMismatch
from .._core import fence
from .confirm import SupervisorConfirm, supervisor_confirm
from .fence_file import DeadlineFence

# Outcomes that running the agent again cannot change: the supervisor does not restart these.
FINAL_ERRORS = (AgentFailed, BudgetExceeded, RunMismatch, InvalidInputs, InvalidTarget)
FENCED_EXIT = 75
"""A worker's exit code when its supervisor's lease deadline passed (EX_TEMPFAIL): nothing more was written."""


def write_result(results_dir: Path, agent_id: str, payload: dict[str, Any]) -> None:
    """Atomically (temp file, fsync, rename): the supervisor never reads half a result."""
    write_json_atomic(results_dir / f"{agent_id}.json", payload, fsync=True)


class _OneAgent(logging.Filter):
    """Routes an agent thread's log records to that agent's own log file."""

    def __init__(self, agent_id: str) -> None:
        super().__init__()
        self.agent_id = agent_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.agent_id


def run_one(spec: dict[str, Any], agent_id: str, inputs: dict[str, Any]) -> None:
    from .._base.config import ShardConfig
    from .run import config_from_env, run_agent

    results = Path(spec["results_dir"])
    logs = Path(spec["results_dir"]).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f"{agent_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OneAgent(agent_id))
    logging.getLogger().addHandler(handler)
    try:
        config = config_from_env(os.environ, ShardConfig(**spec["shard"]))  # this process's edge
        config = replace(config, **spec.get("run", {}))  # the fleet's durability settings
        if spec.get("confirm_socket"):
            supervisor_confirm.set(SupervisorConfirm(Path(spec["confirm_socket"])))
        result = run_agent(spec["target"], agent_id=agent_id, data_dir=spec["data_dir"], config=config, **inputs)
        write_result(results, agent_id, {"status": "succeeded", "result": result})
    except Draining:  # the worker was told to stop: the agent's answers in flight are recorded, nothing else
        logging.getLogger("agentshards").info("agent %s: stopped before its next LLM request (worker stopping)",
                                              agent_id)
    except Fenced as exc:  # not the agent's outcome: stop the whole worker now, as a SIGKILL would
        logging.getLogger("agentshards").error("agent %s: %s: %s; worker %d exits with %d", agent_id,
                                               type(exc).__name__, exc, os.getpid(), FENCED_EXIT)
        os._exit(FENCED_EXIT)
    except Exception as exc:
        status = "budget_exceeded" if isinstance(exc, BudgetExceeded) else "failed"
        write_result(results, agent_id, {
            "status": status, "final": isinstance(exc, FINAL_ERRORS),
            "error": {"type": type(exc).__name__, "message": str(exc)[:2000],
                      "traceback": "".join(traceback.format_exception(exc))[-4000:]}})
        logging.getLogger("agentshards").error("agent %s ended with %s", agent_id, exc)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    logging.getLogger().setLevel(logging.INFO)
    sys.path.insert(0, spec["app_dir"])
    if spec.get("fence"):
        fence.install(DeadlineFence(Path(spec["fence"])))
    # SIGTERM (the supervisor stopping, a node draining): let the LLM answers in flight arrive and be
    # recorded, send no new request; the supervisor's bounded wait ends with SIGKILL whatever an agent does
    signal.signal(signal.SIGTERM, lambda signum, frame: fence.drain())
    threads = [threading.Thread(target=run_one, args=(spec, a["agent_id"], a["inputs"]), name=a["agent_id"])
               for a in spec["agents"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
