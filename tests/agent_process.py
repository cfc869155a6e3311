"""Run sample agents in real child processes, for tests that SIGKILL them."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from agentshards import FakeLLMServer, inspect_agent
from agentshards.testing._fakellm import FakeRequest, serial_of

TESTS_DIR = Path(__file__).resolve().parent

CHILD = """
import json, os, sys
import openai  # preloaded by the harness so kill moments land in agent code, not in imports
import agentshards, sample_agents
config = None
if os.environ.get("TEST_DURABILITY"):
    config = agentshards.RunConfig(llm=agentshards.LLMConfig(api_key=os.environ["OPENAI_API_KEY"],
                                   base_url=os.environ["OPENAI_BASE_URL"]), durability=os.environ["TEST_DURABILITY"],
                                   lease_ttl_s=float(os.environ.get("TEST_LEASE_TTL", "30")),
                                   lease_take_over=bool(os.environ.get("TEST_TAKE_OVER")))
print("ready", flush=True)
result = agentshards.run_agent(sample_agents.chat_calls, agent_id=sys.argv[2], data_dir=sys.argv[1], n=int(sys.argv[3]),
                               replica=os.environ.get("TEST_REPLICA"), config=config)
print(json.dumps(result), flush=True)
"""


def spawn_chat_agent(data_dir: Path, base_url: str, agent_id: str, calls: int,
                     extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`sample_agents.chat_calls` as a child process talking to the fake server at ``base_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AWS_", "AGENTSHARDS_", "TEST_"))}
    env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=base_url, PYTHONPATH=str(TESTS_DIR), **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), agent_id, str(calls)],
                            stdout=subprocess.PIPE, text=True, env=env)


def wait_ready(proc: subprocess.Popen[str], deadline_s: float = 30.0) -> None:
    """Read the child's "ready" line byte by byte from the pipe itself.

    A buffered readline() could also swallow the result line of a fast child, which communicate(timeout=...)
    (reading the raw pipe) would then never see.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    end = time.monotonic() + deadline_s
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        assert ready, "child never became ready"
        chunk = os.read(fd, 1)
        assert chunk, f"child exited before it was ready (code {proc.wait()})"
        line += chunk
    assert line.strip() == b"ready"


def completed_steps(data_dir: Path, agent_id: str) -> int:
    if not (data_dir / f"{agent_id}.db").exists():
        return 0
    runs = inspect_agent(data_dir, agent_id).runs
    return len(runs[-1].steps) if runs else 0


def finish_and_check(data_dir: Path, llm: FakeLLMServer, agent_id: str, calls: int,
                     extra_env: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[FakeRequest]]:
    """Run the agent to completion, re-run it (no request allowed), and check no completed call was repeated."""
    proc = spawn_chat_agent(data_dir, llm.base_url, agent_id, calls, extra_env)
    wait_ready(proc)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    result: list[dict[str, Any]] = json.loads(out)
    log = [r for r in llm.requests if f"of {calls}" in r.body["messages"][0]["content"]]

    before = llm.request_count
    again = spawn_chat_agent(data_dir, llm.base_url, agent_id, calls, extra_env)
    wait_ready(again)
    out_again, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and json.loads(out_again) == result
    assert llm.request_count == before, "re-running a finished agent made a request"

    assert [r["i"] for r in result] == list(range(calls))
    by_serial = {r.serial: r for r in log}
    serials = [serial_of(r["id"]) for r in result]
    assert len(set(serials)) == calls  # every serial in the result was issued exactly once
    for entry, serial in zip(result, serials, strict=True):
        prompt = f"call {entry['i']} of {calls}"
        assert by_serial[serial].body["messages"][0]["content"] == prompt
        # Once a call completed (its answer was recorded), it was never requested again.
        later = [r.serial for r in log if r.serial > serial and r.body["messages"][0]["content"] == prompt]
        assert later == [], f"call {entry['i']} was paid for again after completing: {later}"
    conn = apsw.Connection(str(data_dir / f"{agent_id}.db"))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    return result, log


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
