"""Agent functions for the published-state tests, importable as ``state_agents:<name>`` (tests/ is on sys.path).

Each misbehaves only while a file the test controls exists, so the same agent recovered on a fresh node
(where that file is gone) runs to the end.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import agentshards


def halts_litestream(agent: agentshards.Agent, pid_file: str, how: str, confirm: bool) -> str:
    """One step; then, while ``pid_file`` exists, send ``how`` (SIGKILL, SIGSTOP) to the Litestream whose
    pid it holds, so the replica never receives the end of the run. ``confirm``: the step waits for the
    replica first (run_agent with a replica only; a fleet's workers have none); on a node without that
    file the step replays as a plain one."""
    path = Path(pid_file)
    halting = path.exists()
    (agent.options(durability="replicated") if confirm and halting else agent).step("first", lambda: "one")
    if halting:
        os.kill(int(path.read_text()), getattr(signal, how))
    return "done"


def dies_while(agent: agentshards.Agent, marker: str) -> str:
    """Kills its own worker while ``marker`` exists (a crash that restarts cannot cure); else finishes."""
    agent.step("before", lambda: "kept")
    if Path(marker).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return "alive"


def sleeps(agent: agentshards.Agent, seconds: float) -> str:
    import time

    agent.step("nap", time.sleep, seconds)
    return "rested"
