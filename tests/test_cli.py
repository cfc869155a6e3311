"""The console script, run as a user would: a real subprocess, its stdout, stderr and exit code.

The JSON contract (docs/cli.md): with --json, stdout is one JSON document (the result, or {"error": ...})
and the exit code says which; errors also print one line on stderr; never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentshards import AgentFailed, FakeLLMServer, run_agent
from agentshards.testing._fakellm import serial_of

import sample_agents
from agent_process import TESTS_DIR

CLI = [sys.executable, "-m", "agentshards"]


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env={**base, **(env or {})},
                            timeout=timeout, input=stdin)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _json(*args: str, cwd: Path, code: int = 0, env: dict[str, str] | None = None, report: bool = False) -> Any:
    """``report``: a non-zero exit that still prints the command's own document (a batch with failures,
    a doctor with failed checks) instead of an error document."""
    result = _run(*args, "--json", cwd=cwd, env=env)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    payload = json.loads(result.stdout)
    if code and not report:
        assert set(payload) == {"error"} and payload["error"]["exit_code"] == code
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    return payload


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo run (data dir d, replica r) that tests copy: the demo is the slowest command."""
    root = tmp_path_factory.mktemp("demo")
    first = _run("demo", "--data-dir", "d", "--replica", "r", "--agents", "2", cwd=root)
    assert first.returncode == 0, first.stderr
    (root / "first.out").write_text(first.stdout)
    (root / "first.err").write_text(first.stderr)
    return root


@pytest.fixture
def demo_copy(demo_state: Path, tmp_path: Path) -> Iterator[Path]:
    for name in ("d", "r"):
        shutil.copytree(demo_state / name, tmp_path / name)
    yield tmp_path


def test_demo_runs_offline_loses_the_node_and_restores_for_free(demo_state: Path, demo_copy: Path) -> None:
    out, err = (demo_state / "first.out").read_text(), (demo_state / "first.err").read_text()
    assert "SIGKILLed worker" in out and "killed by SIGKILL; restart 1/5" in err
    finished = next(line for line in out.splitlines() if line.startswith("all 2 finished"))
    requests = int(finished.rsplit(" ", 1)[1])
    assert 4 <= requests <= 6  # 4 calls, plus at most one in flight per agent killed
    assert ("were sent again after its restart" in out) == (requests > 4)  # the demo explains the extra requests
    assert f"node loss: removed {demo_state / 'd'}" in out
    assert "restored 2 agents from the replica; LLM requests when running them again: 0" in out
    assert "next, try:" in out and "agentshards dashboard --data-dir" in out
    assert sorted(p.name for p in (demo_state / "d").glob("*.db")) == ["researcher-001.db", "researcher-002.db"]
    again = _json("demo", "--data-dir", "d", "--replica", "r", "--agents", "2", cwd=demo_copy)
    assert again == {"requests_first_pass": 0, "requests_replay": 0, "restarts": 0,
                     "agents": ["researcher-001", "researcher-002"]}
    said = _run("demo", "--data-dir", "d", "--replica", "r", "--agents", "2", cwd=demo_copy)
    assert "reusing an earlier demo's state" in said.stdout


def test_the_demo_never_deletes_a_directory_of_other_agents(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "billing.db").write_bytes(b"precious")
    refused = _json("demo", "--data-dir", "mine", cwd=tmp_path, code=2)
    assert "did not write" in refused["error"]["message"]
    assert (tmp_path / "mine" / "billing.db").read_bytes() == b"precious"


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = _run("inspect", "../etc", "--data-dir", "d", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: invalid agent id") and "hint:" in bad.stderr
    (tmp_path / "d").mkdir()
    missing = _run("inspect", "nobody", "--data-dir", "d", cwd=tmp_path)
    assert missing.returncode == 1 and "no shard" in missing.stderr
    for args in (["run", "x:y", "--agents", "1", "--data-dir", "/etc/passwd"], ["status", "--data-dir", "/proc/x"],
                 ["demo", "--data-dir", "/etc/passwd"]):
        out = _run(*args, cwd=tmp_path)
        assert out.returncode in (1, 2) and out.stderr.startswith("error: "), (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_read_only_commands_refuse_missing_places_and_create_nothing(tmp_path: Path) -> None:
    for args in (["status"], ["spend"], ["query", "SELECT 1"], ["status", "--data-dir", "typo"],
                 ["inspect", "a1", "--data-dir", "typo"], ["logs", "a1", "--data-dir", "typo"]):
        error = _json(*args, cwd=tmp_path, code=1)["error"]
        assert error["type"] == "ShardError" and "no data dir" in error["message"], args
    for args in (["fleet", "--replica", "./nope"], ["archives", "--replica", "./nope"]):
        error = _json(*args, cwd=tmp_path, code=2)["error"]
        assert error["type"] == "InvalidReplica" and "nothing was created" in error["hint"]
    assert list(tmp_path.iterdir()) == []


def test_run_status_spend_and_logs(tmp_path: Path) -> None:
    inputs = tmp_path / "agents.jsonl"
    inputs.write_text('{"agent_id": "c-10", "inputs": {"n": 2}}\n{"agent_id": "c-2", "inputs": {"n": 3}}\n')
    with FakeLLMServer() as llm:
        env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": llm.base_url}
        ran = _json("run", "sample_agents:chat_calls", "--inputs", str(inputs), "--data-dir", "d", "--replica", "r",
                    "--agents-per-worker", "2", "--app-dir", str(TESTS_DIR), cwd=tmp_path, env=env)
        assert ran["ok"] == 2 and ran["failed"] == 0 and set(ran["agents"]) == {"c-10", "c-2"}
        assert [r["i"] for r in ran["agents"]["c-2"]["result"]] == [0, 1, 2]
        assert llm.request_count == 5
    shown = _json("status", "--data-dir", "d", cwd=tmp_path)
    assert [a["agent_id"] for a in shown["agents"]] == ["c-2", "c-10"]  # natural order
    assert shown["states"] == {"succeeded": 2} and shown["totals"]["llm_calls"] == 5 and shown["errors"] == []
    rows = {a["agent_id"]: a for a in shown["agents"]}
    assert (rows["c-10"]["llm_calls"], rows["c-2"]["llm_calls"]) == (2, 3)
    text = _run("status", "--data-dir", "d", cwd=tmp_path).stdout
    assert text.splitlines()[0].startswith("2 agents: 2 succeeded") and text.index("c-2 ") < text.index("c-10")
    assert _json("status", "--data-dir", "d", "--state", "failed", cwd=tmp_path)["agents"] == []
    spent = _json("spend", "--data-dir", "d", cwd=tmp_path)
    assert spent["total"]["calls"] == 5 and set(spent["agents"]) == {"c-10", "c-2"}
    logs = _json("logs", "c-2", "--data-dir", "d", cwd=tmp_path)
    assert logs["agent_id"] == "c-2" and logs["path"].endswith("c-2.log")
    assert _json("logs", "nobody", "--data-dir", "d", cwd=tmp_path, code=1)["error"]["type"] == "ShardError"


def test_status_reads_the_shards_not_a_stale_supervisor_file(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_agent(sample_agents.two_steps, agent_id="a", data_dir=data, x=1)
    (data / ".fleet").mkdir()
    (data / ".fleet" / "status.json").write_text(json.dumps(
        {"pid": 1, "agents": {"a": {"status": "running", "restarts": 3}, "gone": {"status": "running"}}}))
    shown = _json("status", "--data-dir", "d", cwd=tmp_path)  # nobody holds the data dir: the file says nothing
    assert [(a["agent_id"], a["status"], a["restarts"]) for a in shown["agents"]] == [("a", "succeeded", 0)]


def test_one_unreadable_file_is_reported_and_the_rest_shown(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_agent(sample_agents.two_steps, agent_id="good", data_dir=data, x=1)
    (data / "broken.db").write_bytes(b"this is not sqlite" * 100)
    import sqlite3

    with sqlite3.connect(data / "notes.db") as notes:  # somebody's own database dropped in the data dir
        notes.execute("CREATE TABLE todo (item TEXT)")
    notes.close()
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    result = _run("status", "--data-dir", "d", "--json", cwd=tmp_path)
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert [a["agent_id"] for a in payload["agents"]] == ["good"]
    assert sorted(e["agent_id"] for e in payload["errors"]) == ["broken", "notes"]
    assert result.stderr.count("error: ") == 2
    spent = _run("spend", "--data-dir", "d", "--json", cwd=tmp_path)
    assert spent.returncode == 1 and list(json.loads(spent.stdout)["agents"]) == ["good"]
    assert sorted(json.loads(spent.stdout)["errors"]) == ["broken", "notes"] and spent.stderr.count("error: ") == 2
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before


def test_restore_fleet_inspect_query_in_json(demo_copy: Path) -> None:
    listed = _json("fleet", "--replica", "r", cwd=demo_copy)
    assert [e["status"] for e in listed] == ["succeeded", "succeeded"]
    nothing = _json("restore", "--all", "--replica", "r", "--data-dir", "x", cwd=demo_copy)
    assert nothing == {"agents": {}, "ok": 0, "failed": 0}
    said = _run("restore", "--all", "--replica", "r", "--data-dir", "x", cwd=demo_copy)
    assert said.returncode == 0 and "none is unfinished" in said.stdout
    restored = _json("restore", "researcher-002", "ghost", "--replica", "r", "--data-dir", "elsewhere", cwd=demo_copy,
                     code=1, report=True)
    assert (restored["ok"], restored["failed"]) == (1, 1) and restored["agents"]["researcher-002"]["ok"] is True
    assert restored["agents"]["ghost"]["error"]["type"] in ("NoReplica", "ReplicationError")
    text = _run("restore", "researcher-001", "ghost", "--replica", "r", "--data-dir", "elsewhere2", cwd=demo_copy)
    assert text.returncode == 1 and "researcher-001: restored to" in text.stdout and "ghost: FAILED" in text.stderr

    report = _json("inspect", "researcher-001", "--data-dir", "d", cwd=demo_copy)
    (run,) = report["runs"]
    assert run["run"]["status"] == "succeeded"
    assert [s["name"] for s in run["steps"]] == ["llm#1", "search", "llm#2"]
    assert serial_of(json.loads(run["steps"][0]["output_json"])["id"]) >= 1
    text = _run("inspect", "researcher-001", "--data-dir", "d", cwd=demo_copy).stdout
    assert "succeeded" in text and "search" in text and "answer to: Plan research" in text  # the LLM's words
    assert "started " in text and "took " in text

    rows = _json("query", "SELECT step_name, kind FROM steps ORDER BY rowid", "--data-dir", "d", cwd=demo_copy)
    assert rows["columns"] == ["agent_id", "step_name", "kind"] and len(rows["rows"]) == 6
    assert rows["rows"][0] == {"agent_id": "researcher-001", "step_name": "llm#1", "kind": "llm"}
    reduced = _run("query", "SELECT kind, count(*) AS n FROM steps GROUP BY kind", "--data-dir", "d",
                   "--reduce", "SELECT kind, sum(n) FROM rows GROUP BY kind ORDER BY kind", cwd=demo_copy)
    assert reduced.stdout.splitlines()[1:] == ["llm\t4", "step\t2"]
    for bad in ("DELETE FROM steps", "UPDATE workflows SET status = 'failed'", "PRAGMA journal_mode=DELETE",
                "ATTACH DATABASE 'x.db' AS x", "CREATE TABLE t(x)", "SELEC nonsense"):
        refused = _json("query", bad, "--data-dir", "d", cwd=demo_copy, code=2)
        assert refused["error"]["type"] == "InvalidInputs", bad


def test_archive_archives_fetch_delete_in_json(demo_copy: Path) -> None:
    archived = _json("archive", "--all-finished", "--replica", "r", "--data-dir", "d", cwd=demo_copy)
    assert archived["ok"] == 2 and not list((demo_copy / "d").glob("*.db"))
    assert archived["agents"]["researcher-001"]["result"]["key"].endswith("researcher-001.db")
    listed = _json("archives", "--replica", "r", cwd=demo_copy)
    assert [e["agent_id"] for e in listed["archives"]] == ["researcher-001", "researcher-002"]
    dry = _json("archives", "--replica", "r", "--expire-older-than-days", "0.000001", "--dry-run", cwd=demo_copy)
    assert dry["expired"] == ["researcher-001", "researcher-002"] and len(dry["archives"]) == 2  # nothing deleted
    unasked = _run("archives", "--replica", "r", "--expire-older-than-days", "0.000001", cwd=demo_copy, stdin="")
    assert unasked.returncode == 2 and "--yes" in unasked.stderr
    assert _run("archives", "--replica", "r", "--expire-older-than-days", "0", cwd=demo_copy).returncode == 2
    fetched = _json("fetch", "researcher-001", "--replica", "r", "--data-dir", "look", cwd=demo_copy)
    assert fetched["path"].endswith("researcher-001.db") and (demo_copy / "look" / "researcher-001.db").exists()
    assert _json("fetch", "ghost", "--replica", "r", "--data-dir", "look", cwd=demo_copy, code=1)["error"]
    refused = _run("delete", "researcher-002", "--data-dir", "d", "--replica", "r", cwd=demo_copy, stdin="n\n")
    assert refused.returncode == 2 and "--yes" in refused.stderr  # no terminal to ask: refused, nothing deleted
    dry_delete = _json("delete", "researcher-002", "--data-dir", "d", "--replica", "r", "--dry-run", cwd=demo_copy)
    assert dry_delete["removed"] == []
    deleted = _json("delete", "researcher-002", "--data-dir", "d", "--replica", "r", "--yes", cwd=demo_copy)
    assert deleted["removed"] == ["archive", "manifest"]  # the entry last: a failure half-way still lists it
    assert [e["agent_id"] for e in _json("archives", "--replica", "r", cwd=demo_copy)["archives"]] == ["researcher-001"]


def test_cancel_retry_and_fork(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.two_steps_then_interrupt, agent_id="open", data_dir=data, x=3)
    cancelled = _json("cancel", "open", "--data-dir", "d", cwd=tmp_path)
    assert cancelled["run"]["status"] == "cancelled"
    again = _json("cancel", "open", "--data-dir", "d", cwd=tmp_path, code=2)  # nothing open any more
    assert again["error"]["type"] == "InvalidInputs" and again["error"]["agent_id"] == "open"
    marker = tmp_path / "fixed"
    with pytest.raises(AgentFailed, match="is missing"):
        run_agent(sample_agents.fails_until, agent_id="flaky", data_dir=data, marker=str(marker))
    marker.touch()  # the cause is fixed: retry resumes the failed run from its last completed step
    retried = _json("retry", "flaky", "--data-dir", "d", "--app-dir", str(TESTS_DIR), cwd=tmp_path)
    assert retried == {"agent_id": "flaky", "result": "ok"}
    from agentshards import inspect_agent

    (run,) = inspect_agent(data, "flaky").runs
    assert run.run.status == "succeeded" and [s.name for s in run.steps] == ["first", "check"]
    forked = _json("fork", "flaky", "--at", "check", "--data-dir", "d", cwd=tmp_path)
    runs = inspect_agent(data, "flaky").runs
    assert runs[-1].run.id == forked["run_id"] and [s.name for s in runs[-1].steps] == ["first"]
    assert _json("fork", "flaky", "--at", "99", "--data-dir", "d", cwd=tmp_path, code=2)["error"]["type"] == \
        "InvalidInputs"
    assert _json("fork", "flaky", "--at", "1", "--inputs", "[1]", "--data-dir", "d", cwd=tmp_path, code=2)


def test_duplicate_ids_in_an_inputs_file_are_refused(tmp_path: Path) -> None:
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"agent_id": "a", "inputs": {}}\n{"agent_id": "a", "inputs": {}}\n')
    out = _run("run", "sample_agents:two_steps", "--inputs", str(dup), "--data-dir", "d", cwd=tmp_path)
    assert out.returncode == 2 and "appears twice" in out.stderr
    bad_id = tmp_path / "bad.jsonl"
    bad_id.write_text('{"agent_id": "../../etc", "inputs": {}}\n')
    out = _run("run", "sample_agents:two_steps", "--inputs", str(bad_id), "--data-dir", "d", cwd=tmp_path)
    assert out.returncode == 2 and "invalid agent id" in out.stderr
    bad = tmp_path / "bad2.jsonl"
    bad.write_text("not json\n")
    for args in (["--agents", "2", "--inputs", str(bad)], ["--inputs", str(bad)],
                 ["--inputs", str(tmp_path / "missing.jsonl")]):
        error = _json("run", "sample_agents:chat_calls", *args, "--data-dir", "d", cwd=tmp_path, code=2)["error"]
        assert error["message"], args
    unknown = _run("run", "nowhere_module:fn", "--agents", "1", "--data-dir", "d", cwd=tmp_path)
    assert unknown.returncode == 2 and "cannot import" in unknown.stderr
    assert not (tmp_path / "d").exists()


def test_environment_twins_and_recover_in_json(tmp_path: Path) -> None:
    env = {"AGENTSHARDS_DATA_DIR": str(tmp_path / "fresh"), "AGENTSHARDS_REPLICA": str(tmp_path / "empty-replica")}
    (tmp_path / "empty-replica").mkdir()
    recovered = _json("recover", cwd=tmp_path, env=env)
    assert recovered == {"agents": {}, "ok": 0, "failed": 0}
    missing = _run("recover", cwd=tmp_path)
    assert missing.returncode == 2 and "AGENTSHARDS_REPLICA" in missing.stderr


def test_doctor_and_completion(tmp_path: Path) -> None:
    missing = _json("doctor", "--replica", str(tmp_path / "rep"), cwd=tmp_path, code=1, report=True)
    assert [c["check"] for c in missing["checks"] if not c["ok"]] == ["bucket"] and not (tmp_path / "rep").exists()
    (tmp_path / "rep").mkdir()
    doctor = _json("doctor", "--replica", str(tmp_path / "rep"), cwd=tmp_path)
    checks = {c["check"]: c for c in doctor["checks"]}
    assert checks["conditional writes"]["ok"] and "this host only" in checks["conditional writes"]["detail"]
    assert list((tmp_path / "rep").iterdir()) == []  # a check writes nothing into a directory replica
    assert doctor["ok"] is True and checks["litestream"]["ok"] and "0.5" in checks["litestream"]["detail"]
    assert checks["sqlite"]["ok"] and "SQLite 3." in checks["sqlite"]["detail"]
    broken = _json("doctor", "--data-dir", str(tmp_path / "absent"), cwd=tmp_path, code=1, report=True)
    (data_dir_check,) = [c for c in broken["checks"] if c["check"] == "data dir"]
    assert broken["ok"] is False and data_dir_check["ok"] is False and data_dir_check["fix"]
    script = _run("completion", "bash", cwd=tmp_path)
    assert script.returncode == 0 and "_AGENTSHARDS_COMPLETE" in script.stdout


def _in_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run the CLI with stdin/stdout/stderr on a pseudo-terminal, as a person's shell would, and read it all."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("no output from the CLI for 60 s")
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(30)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_progress_is_live_on_a_terminal_and_plain_in_a_pipe(tmp_path: Path) -> None:
    inputs = tmp_path / "agents.jsonl"
    inputs.write_text("".join(f'{{"agent_id": "p{i}", "inputs": {{"x": {i}}}}}\n' for i in range(3)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    env.update(TERM="xterm-256color", COLUMNS="120")
    shown = _in_a_terminal(["run", "sample_agents:two_steps", "--inputs", str(inputs), "--data-dir", "t",
                            "--app-dir", str(TESTS_DIR)], tmp_path, env)
    assert "\x1b[" in shown and "run: 3/3 done" in shown and "succeeded 3" in shown, shown
    piped = _run("run", "sample_agents:two_steps", "--inputs", str(inputs), "--data-dir", "p", "--app-dir",
                 str(TESTS_DIR), cwd=tmp_path)
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout + piped.stderr
    assert "3 agents finished ok, 0 failed" in piped.stdout


def test_run_new_run_starts_each_agent_afresh_once(tmp_path: Path) -> None:
    inputs = tmp_path / "agents.jsonl"
    inputs.write_text('{"agent_id": "n1", "inputs": {"x": 1}}\n')
    args = ["run", "sample_agents:two_steps", "--inputs", str(inputs), "--data-dir", "d", "--app-dir", str(TESTS_DIR)]
    first = _json(*args, cwd=tmp_path)
    again = _json(*args, cwd=tmp_path)  # finished: the recorded result, no new run
    fresh = _json(*args, "--new-run", cwd=tmp_path)
    assert first["agents"]["n1"] == again["agents"]["n1"] == fresh["agents"]["n1"]
    from agentshards import inspect_agent

    runs = inspect_agent(tmp_path / "d", "n1").runs
    assert [r.run.status for r in runs] == ["succeeded", "succeeded"] and len(runs[-1].steps) == 2


def test_fake_llm_serves_until_interrupted(tmp_path: Path) -> None:
    import signal
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    proc = subprocess.Popen([*CLI, "fake-llm", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[3]
        request = urllib.request.Request(url + "/chat/completions", method="POST", data=json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer fake"})
        answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert "hi" in answer["choices"][0]["message"]["content"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_status_watch_refreshes_until_interrupted(tmp_path: Path) -> None:
    import signal
    import time

    run_agent(sample_agents.two_steps, agent_id="w1", data_dir=tmp_path / "d", x=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    proc = subprocess.Popen([*CLI, "status", "--watch", "--interval", "0.2", "--data-dir", "d"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 30
    seen = 0
    assert proc.stdout is not None
    while seen < 2 and time.monotonic() < deadline:
        if proc.stdout.readline().startswith("1 agents: 1 succeeded"):
            seen += 1
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=10)
    assert seen == 2 and proc.returncode == 0 and "Traceback" not in err


def _files(where: Path) -> dict[str, tuple[int, int, str]]:
    import hashlib

    return {str(p.relative_to(where)): (p.stat().st_size, p.stat().st_mtime_ns,
                                        hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(where.rglob("*")) if p.is_file()}


def test_read_only_commands_create_and_change_no_file(tmp_path: Path) -> None:
    """status, inspect, spend and query look at shards without writing: no migration, no checkpoint, no -wal
    or -shm created, not even reader marks in an existing -shm. Two shapes of shard: as the app leaves it
    (file, -wal, -shm) and as a restore or a checkpoint leaves it (the file alone)."""
    import apsw

    from agentshards import run_agent

    import sample_agents

    data = tmp_path / "d"
    for agent_id in ("live", "packed"):
        run_agent(sample_agents.many_steps, agent_id=agent_id, data_dir=data, n=3)
    conn = apsw.Connection(str(data / "packed.db"))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()  # a plain SQLite close: checkpoints and deletes packed's -wal and -shm
    assert {p.name for p in data.glob("*.db*")} == {"live.db", "live.db-wal", "live.db-shm", "packed.db"}
    before = _files(data)
    for args in (["status"], ["status", "--json"], ["inspect", "live"], ["inspect", "packed", "--json"], ["spend"],
                 ["spend", "packed"], ["query", "SELECT count(*) FROM steps"]):
        out = _run(*args, "--data-dir", "d", cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
        assert _files(data) == before, args
    assert _run("query", "SELECT count(*) FROM steps", "--data-dir", "d", cwd=tmp_path).stdout.splitlines()[1:] == [
        "live\t3", "packed\t3"]


CTE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _one_shard(tmp_path: Path) -> None:
    from agentshards import run_agent

    import sample_agents

    run_agent(sample_agents.many_steps, agent_id="a1", data_dir=tmp_path / "d", n=1)


def test_query_stops_at_its_timeout(tmp_path: Path) -> None:
    import time

    from agentshards import InvalidInputs, query_fleet

    _one_shard(tmp_path)
    started = time.monotonic()
    with pytest.raises(InvalidInputs, match=r"agent a1: the query ran past its 0.3 s timeout") as info:
        query_fleet(tmp_path / "d", CTE, timeout_s=0.3)
    assert time.monotonic() - started < 5 and info.value.hint
    out = _run("query", CTE, "--data-dir", "d", "--timeout", "0.3", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "timeout" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_query_stops_on_ctrl_c(tmp_path: Path) -> None:
    """An endless recursive CTE runs inside SQLite, where Python's SIGINT handler would never run."""
    import signal
    import time

    _one_shard(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    proc = subprocess.Popen([*CLI, "query", CTE, "--data-dir", "d"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        shard = os.path.realpath(tmp_path / "d" / "a1.db")
        deadline = time.monotonic() + 30

        def running(what: str) -> bool:
            assert proc.poll() is None, (what, proc.communicate())
            assert time.monotonic() < deadline, what
            return True

        def holds_shard() -> bool:
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{proc.pid}/fd/{fd}") == shard:
                        return True
                except FileNotFoundError:  # closed between the listing and the look (imports open and close files)
                    continue
            return False

        while running("the query never opened the shard") and not holds_shard():
            time.sleep(0.01)
        opened = _cpu_s(proc.pid)
        while running("the query did not run") and _cpu_s(proc.pid) < opened + 0.5:  # now it is in the CTE
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err.splitlines() == ["interrupted"]
