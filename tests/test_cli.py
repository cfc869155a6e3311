"""The console script, run as a user would: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentshards import AgentFailed
from agentshards.testing._fakellm import serial_of

CLI = [sys.executable, "-m", "agentshards"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_demo_runs_offline_loses_the_node_and_restores_for_free(tmp_path: Path) -> None:
    first = _run("demo", "--data-dir", "d", "--replica", "r", "--agents", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "SIGKILLed worker" in first.stdout and "killed by SIGKILL; restart 1/5" in first.stderr
    finished = next(line for line in first.stdout.splitlines() if line.startswith("all 2 finished"))
    assert 4 <= int(finished.rsplit(" ", 1)[1]) <= 6  # 4 calls, plus at most one in flight per agent killed
    assert f"node loss: removed {tmp_path / 'd'}" in first.stdout
    assert "restored 2 agents from the replica; LLM requests when running them again: 0" in first.stdout
    assert sorted(p.name for p in (tmp_path / "d").glob("*.db")) == ["researcher-001.db", "researcher-002.db"]
    assert (tmp_path / "r" / "manifest" / "researcher-001.json").exists()
    again = _run("demo", "--data-dir", "d", "--replica", "r", "--agents", "2", cwd=tmp_path)
    assert "(0 agent restarts); LLM requests: 0" in again.stdout

    listed = _run("fleet", "--replica", "r", "--json", cwd=tmp_path)
    assert [e["status"] for e in json.loads(listed.stdout)] == ["succeeded", "succeeded"]
    restored = _run("restore", "researcher-002", "ghost", "--replica", "r", "--data-dir", "elsewhere", cwd=tmp_path)
    assert restored.returncode == 1
    assert "researcher-002: restored to" in restored.stdout and "no replica for agent ghost" in restored.stderr

    shown = _run("inspect", "researcher-001", "--data-dir", "d", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    (run,) = report["runs"]
    assert run["run"]["status"] == "succeeded"
    assert [s["name"] for s in run["steps"]] == ["llm#1", "search", "llm#2"]
    assert serial_of(json.loads(run["steps"][0]["output_json"])["id"]) >= 1

    text = _run("inspect", "researcher-001", "--data-dir", "d", cwd=tmp_path)
    assert "succeeded" in text.stdout and "search" in text.stdout


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = _run("inspect", "../etc", "--data-dir", "d", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: invalid agent id") and "hint:" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = _run("inspect", "nobody", "--data-dir", "d", cwd=tmp_path)
    assert missing.returncode == 1 and "no shard" in missing.stderr


def test_run_and_status_from_the_command_line(tmp_path: Path) -> None:
    from agentshards import FakeLLMServer

    from agent_process import TESTS_DIR

    inputs = tmp_path / "agents.jsonl"
    inputs.write_text('{"agent_id": "c1", "inputs": {"n": 2}}\n{"agent_id": "c2", "inputs": {"n": 3}}\n')
    with FakeLLMServer() as llm:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        ran = subprocess.run([*CLI, "run", "sample_agents:chat_calls", "--inputs", str(inputs), "--data-dir", "d",
                              "--replica", "r", "--agents-per-worker", "2", "--app-dir", str(TESTS_DIR)],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert "2 succeeded, 0 failed" in ran.stdout
        assert llm.request_count == 5
    shown = _run("status", "--data-dir", "d", "--json", cwd=tmp_path)
    rows = {r["agent_id"]: r for r in json.loads(shown.stdout)}
    assert (rows["c1"]["status"], rows["c1"]["llm_calls"], rows["c2"]["llm_calls"]) == ("succeeded", 2, 3)
    assert "c2" in _run("status", "--data-dir", "d", cwd=tmp_path).stdout
    spent = _run("spend", "--data-dir", "d", cwd=tmp_path)
    assert spent.returncode == 0 and "TOTAL" in spent.stdout


def test_run_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    for args in (["--agents", "2", "--inputs", str(bad)], ["--inputs", str(bad)],
                 ["--inputs", str(tmp_path / "missing.jsonl")]):
        out = _run("run", "sample_agents:chat_calls", *args, "--data-dir", "d", cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.startswith("error:"), (args, out.stderr)
    unknown = _run("run", "nowhere_module:fn", "--agents", "1", "--data-dir", "d", cwd=tmp_path)
    assert unknown.returncode == 2 and "cannot import" in unknown.stderr


def test_archive_fetch_delete_from_the_command_line(tmp_path: Path) -> None:
    assert _run("demo", "--data-dir", "d", "--replica", "r", "--agents", "2", cwd=tmp_path).returncode == 0
    archived = _run("archive", "--all-finished", "--replica", "r", "--data-dir", "d", cwd=tmp_path)
    assert archived.returncode == 0, archived.stderr
    assert archived.stdout.count("archived to") == 2 and not list((tmp_path / "d").glob("*.db"))
    listed = json.loads(_run("archives", "--replica", "r", "--json", cwd=tmp_path).stdout)
    assert [e["agent_id"] for e in listed] == ["researcher-001", "researcher-002"]
    fetched = _run("fetch", "researcher-001", "--replica", "r", "--data-dir", "look", cwd=tmp_path)
    assert fetched.returncode == 0 and (tmp_path / "look" / "researcher-001.db").exists()
    assert "succeeded" in _run("inspect", "researcher-001", "--data-dir", "look", cwd=tmp_path).stdout
    refused = subprocess.run([*CLI, "delete", "researcher-002", "--data-dir", "d", "--replica", "r"], input="n\n",
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1 and "nothing deleted" in refused.stdout
    deleted = _run("delete", "researcher-002", "--data-dir", "d", "--replica", "r", "--yes", cwd=tmp_path)
    assert "removed manifest, archive" in deleted.stdout


def test_query_is_read_only_and_reduces(tmp_path: Path) -> None:
    assert _run("demo", "--data-dir", "d", "--replica", "r", "--agents", "3", cwd=tmp_path).returncode == 0
    rows = json.loads(_run("query", "SELECT step_name, kind FROM steps ORDER BY rowid", "--data-dir", "d", "--json",
                           cwd=tmp_path).stdout)
    assert len(rows) == 9 and rows[0] == {"agent_id": "researcher-001", "step_name": "llm#1", "kind": "llm"}
    reduced = _run("query", "SELECT kind, count(*) AS n FROM steps GROUP BY kind", "--data-dir", "d",
                   "--reduce", "SELECT kind, sum(n) FROM rows GROUP BY kind ORDER BY kind", cwd=tmp_path)
    assert reduced.stdout.splitlines()[1:] == ["llm\t6", "step\t3"]
    paid = _run("query", "SELECT model, count(*) AS calls FROM llm_ledger WHERE event = 'call' GROUP BY model",
                "--data-dir", "d", "--reduce", "SELECT model, sum(calls) FROM rows GROUP BY model", cwd=tmp_path)
    model, calls = paid.stdout.splitlines()[1].split("\t")
    assert model == "gpt-4o-mini-2024-07-18" and int(calls) >= 6  # a killed worker may have paid for one more
    for bad in ("DELETE FROM steps", "UPDATE workflows SET status = 'failed'", "PRAGMA journal_mode=DELETE",
                "ATTACH DATABASE 'x.db' AS x", "CREATE TABLE t(x)"):
        refused = _run("query", bad, "--data-dir", "d", cwd=tmp_path)
        assert refused.returncode == 2 and "only reads are allowed" in refused.stderr, bad
    assert len(json.loads(_run("query", "SELECT * FROM steps", "--data-dir", "d", "--json", cwd=tmp_path).stdout)) == 9


def test_cancel_and_retry(tmp_path: Path) -> None:
    from agentshards import run_agent

    import sample_agents
    from agent_process import TESTS_DIR

    data = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.two_steps_then_interrupt, agent_id="open", data_dir=data, x=3)
    cancelled = _run("cancel", "open", "--data-dir", "d", cwd=tmp_path)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert _run("cancel", "open", "--data-dir", "d", cwd=tmp_path).returncode == 2  # nothing open any more
    marker = tmp_path / "fixed"
    with pytest.raises(AgentFailed, match="is missing"):
        run_agent(sample_agents.fails_until, agent_id="flaky", data_dir=data, marker=str(marker))
    marker.touch()  # the cause is fixed: retry resumes the failed run from its last completed step
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    retried = subprocess.run([*CLI, "retry", "flaky", "--data-dir", "d", "--app-dir", str(TESTS_DIR)],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == "ok"
    from agentshards import inspect_agent

    (run,) = inspect_agent(data, "flaky").runs
    assert run.run.status == "succeeded" and [s.name for s in run.steps] == ["first", "check"]



def test_duplicate_ids_in_an_inputs_file_are_refused(tmp_path: Path) -> None:
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"agent_id": "a", "inputs": {}}\n{"agent_id": "a", "inputs": {}}\n')
    out = _run("run", "sample_agents:two_steps", "--inputs", str(dup), "--data-dir", "d", cwd=tmp_path)
    assert out.returncode == 2 and "appears twice" in out.stderr
    bad_id = tmp_path / "bad.jsonl"
    bad_id.write_text('{"agent_id": "../../etc", "inputs": {}}\n')
    out = _run("run", "sample_agents:two_steps", "--inputs", str(bad_id), "--data-dir", "d", cwd=tmp_path)
    assert out.returncode == 2 and "invalid agent id" in out.stderr
    assert not (tmp_path / "d").exists()
