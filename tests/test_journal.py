"""Recording semantics: INSERT OR IGNORE, the stored value wins, one open run per shard."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import apsw
import pytest

from agentshards import RunMismatch, ShardConfig
from agentshards._core.journal import RUNNING, SUPERSEDED, Journal
from agentshards._core.shard import open_shard


def _journal(path: Path) -> Journal:
    return Journal(open_shard(path, "a1", ShardConfig()), "a1")


def test_repeated_checkpoint_is_a_noop_and_returns_the_stored_value(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    run = j.begin_run("m:f", "{}", "d")
    assert j.record_step(run.id, "s", "step", '"first"').output_json == '"first"'
    assert j.record_step(run.id, "s", "step", '"second"').output_json == '"first"'
    assert [s.output_json for s in j.steps(run.id)] == ['"first"']


def test_concurrent_recorders_on_two_connections_agree(tmp_path: Path) -> None:
    """Two connections race to record one step, many times: both always get the single stored value."""
    a, b = _journal(tmp_path), _journal(tmp_path)
    run = a.begin_run("m:f", "{}", "d")
    for i in range(30):
        barrier = threading.Barrier(2)
        got: dict[str, str] = {}

        def record(journal: Journal, who: str, i: int = i, barrier: threading.Barrier = barrier,
                   got: dict[str, str] = got) -> None:
            barrier.wait()
            got[who] = journal.record_step(run.id, f"step-{i}", "step", json.dumps(who)).output_json

        threads = [threading.Thread(target=record, args=(j, w)) for j, w in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got["a"] == got["b"] in ('"a"', '"b"')
    assert len(a.steps(run.id)) == 30


def test_one_open_run_is_enforced_by_the_file(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.begin_run("m:f", "{}", "d")
    with pytest.raises(apsw.ConstraintError):
        j._conn.execute(
            "INSERT INTO workflows(id, seq, target, input_json, input_digest, status, created_at, updated_at)"
            " VALUES ('x', 99, 'm:f', '{}', 'd', 'running', 0, 0)")


def test_begin_run_resumes_refuses_and_supersedes(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    first = j.begin_run("m:f", '{"a":1}', "d1")
    assert j.begin_run("m:f", '{"a":1}', "d1").id == first.id
    with pytest.raises(RunMismatch, match="inputs") as info:
        j.begin_run("m:f", '{"a":2}', "d2")
    assert "new_run=True" in str(info.value) and "a1" in str(info.value)
    with pytest.raises(RunMismatch, match="target"):
        j.begin_run("m:g", '{"a":1}', "d1")
    second = j.begin_run("m:f", '{"a":2}', "d2", new_run=True)
    assert second.id != first.id and second.status == RUNNING
    assert [r.status for r in j.runs()] == [SUPERSEDED, RUNNING]


def test_the_step_path_stays_in_a_small_statement_cache(tmp_path: Path) -> None:
    """A shard connection keeps STATEMENT_CACHE prepared statements (apsw's 100 kept every one-off statement
    of a new shard's schema and migrations: ~75 KB). Once warm, a plain step and an LLM step (intent,
    answer, ledger, step) prepare nothing again: the hot set fits."""
    from agentshards._core.ledger import Usage
    from agentshards._core.sqlite import STATEMENT_CACHE

    conn = open_shard(tmp_path, "a", ShardConfig())
    journal = Journal(conn, "a")
    run = journal.begin_run("m:f", "{}", "d")
    usage = Usage("m", 10, 0, 5)

    def steps(first: int, last: int) -> None:
        for i in range(first, last):
            journal.record_step(run.id, f"plain#{i}", "step", json.dumps(i))
            attempt = journal.begin_attempt(run.id, f"llm#{i}", "h")
            journal.record_answer(run.id, f"llm#{i}", attempt, 1, usage, 0.01, None)
            journal.record_step(run.id, f"llm#{i}", "llm", json.dumps({"answer": i}))

    steps(0, 3)
    warm = conn.cache_stats()
    steps(3, 53)
    after = conn.cache_stats()
    assert after["size"] == STATEMENT_CACHE
    assert after["misses"] == warm["misses"] and after["hits"] > warm["hits"] + 300
    journal.close()
