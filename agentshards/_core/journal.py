"""The journal: runs and completed steps of one agent, in that agent's shard.

A step is recorded with ``INSERT OR IGNORE`` on ``UNIQUE(workflow_id, step_name)`` in a transaction that
writes nothing else, so a checkpoint retried after a crash, or raced by a second recorder, is a no-op;
the recorder then returns the *stored* value, never its own, so every caller agrees on one outcome.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace

import apsw

from .._base.errors import RunMismatch, ShardError
from .ledger import Spend, Usage
from .sqlite import query, write_transaction

log = logging.getLogger("agentshards")

BUSY_RETRIES = 2
"""Extra busy_timeout waits for the write lock before a journal write gives up. What is about to be
written may be an LLM answer already paid for: waiting longer is cheaper than paying for it again."""

RUNNING, SUCCEEDED, FAILED, SUPERSEDED = "running", "succeeded", "failed", "superseded"
BUDGET_EXCEEDED, CANCELLED = "budget_exceeded", "cancelled"
FINAL = (SUCCEEDED, FAILED, BUDGET_EXCEEDED, CANCELLED)

_RUN_COLUMNS = (
    "id, seq, target, input_json, input_digest, status, output_json, error_json, created_at, finished_at, forked_from,"
    " executions"
)


@dataclass(frozen=True)
class Run:
    """One row of ``workflows``."""

    id: str
    seq: int
    target: str
    input_json: str
    input_digest: str
    status: str
    output_json: str | None
    error_json: str | None
    created_at: float
    finished_at: float | None
    forked_from: str | None = None
    executions: int = 0
    """How many times the run was started or resumed (numbers the cost ledger's replay rows)."""


@dataclass(frozen=True)
class StepRecord:
    """One row of ``steps``: a completed step, its stored JSON output and what it was called with."""

    name: str
    kind: str
    output_json: str
    completed_at: float
    input_hash: str | None = None
    input_preview: str | None = None
    outcome: str = "ok"
    replicated_at: float | None = None


@dataclass(frozen=True)
class Attempt:
    """One row of ``attempts``: an LLM request that was about to go out."""

    step_name: str
    attempt: int
    request_hash: str
    started_at: float


_STEP_COLUMNS_BUT_REPLICATED = "step_name, kind, output_json, completed_at, input_hash, input_preview, outcome"
_STEP_COLUMNS = _STEP_COLUMNS_BUT_REPLICATED + ", replicated_at"


class _JournalWrite:
    """The context manager behind ``Journal._write`` (a class: it is on the per-step hot path)."""

    __slots__ = ("_journal", "_step", "_tx", "_what")

    def __init__(self, journal: Journal, what: str, step: str | None) -> None:
        self._journal, self._what, self._step = journal, what, step
        self._tx = write_transaction(journal._conn)

    def __enter__(self) -> None:
        self._journal._lock.acquire()
        try:
            try:
                self._tx.__enter__()
            except apsw.BusyError:
                if not self._waited_again():
                    raise
        except BaseException as exc:
            self._journal._lock.release()
            self._raise_storage(exc)
            raise

    def _waited_again(self) -> bool:
        """Off the hot path: up to BUSY_RETRIES more busy_timeout waits for the write lock; True once taken."""
        for retry in range(1, BUSY_RETRIES + 1):
            log.warning("agent %s: the shard's write lock was held past the busy timeout; waiting again "
                        "(%d/%d) to %s", self._journal.agent_id, retry, BUSY_RETRIES, self._what)
            try:
                self._tx.__enter__()
                return True
            except apsw.BusyError:
                continue
        return False

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._tx.__exit__(exc_type, exc, tb)
        except BaseException as failure:
            self._raise_storage(failure)
            raise
        finally:
            self._journal._lock.release()
        if exc is not None:
            self._raise_storage(exc)

    def _raise_storage(self, exc: BaseException) -> None:
        if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
            # Not the agent's outcome: another process (normally Litestream checkpointing, on a starved
            # machine) held the write lock past busy_timeout. The run stays open, so a restart resumes it.
            raise ShardError(f"could not {self._what}: the shard stayed locked past its busy timeout ({exc})",
                             agent_id=self._journal.agent_id, step=self._step,
                             hint="another process held the write lock (Litestream's checkpoint or a reader "
                                  "tool); the step was not recorded, re-run to resume; if it recurs, the "
                                  "machine is overloaded or ShardConfig.busy_timeout_ms is too low") from exc
        if isinstance(exc, (apsw.FullError, apsw.IOError, apsw.ReadOnlyError, apsw.CantOpenError)):
            raise ShardError(f"could not {self._what}: {exc}", agent_id=self._journal.agent_id, step=self._step,
                             hint="free disk space or make the data dir writable, then re-run: the step was not "
                                  "recorded and everything recorded before is intact") from exc


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Journal:
    """Reads and writes one agent's runs and steps over one connection.

    A lock serialises this object's transactions: threads of one agent share the connection, and two
    ``BEGIN IMMEDIATE`` from different threads on one connection would nest.
    """

    def __init__(self, conn: apsw.Connection, agent_id: str) -> None:
        self._conn = conn
        self.agent_id = agent_id
        self._lock = threading.Lock()

    def close(self) -> None:
        """Under the lock: a step still being recorded from another thread finishes its transaction first."""
        with self._lock:
            self._conn.close()

    def _write(self, what: str, step: str | None = None) -> _JournalWrite:
        """One write transaction under this journal's lock; storage failures become a ShardError.

        The transaction is rolled back on failure, so nothing partial is recorded and everything
        committed before stays as it was.
        """
        return _JournalWrite(self, what, step)

    def begin_run(self, target: str, input_json: str, input_digest: str, *, new_run: bool = False) -> Run:
        """Return the run to execute or to report: the open one, the finished one, or a new one.

        Same target and inputs resume the open run (or return the finished one); anything else is a
        RunMismatch unless ``new_run`` asks for a fresh run, which supersedes any open run.
        """
        with self._write("start or resume a run"):
            latest = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows ORDER BY seq DESC LIMIT 1", ())
            if latest is not None and not new_run:
                if latest.target == target and latest.input_digest == input_digest:
                    if latest.status != RUNNING:
                        return latest
                    self._conn.execute("UPDATE workflows SET executions = executions + 1, updated_at = ?"
                                       " WHERE id = ?", (time.time(), latest.id))
                    return replace(latest, executions=latest.executions + 1)
                raise RunMismatch(self._mismatch(latest, target, input_json), agent_id=self.agent_id,
                                  hint="pass new_run=True to start a new run; the old one stays in the journal")
            now = time.time()
            if latest is not None and latest.status == RUNNING:
                self._conn.execute(
                    "UPDATE workflows SET status = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                    (SUPERSEDED, now, now, latest.id),
                )
            run_id = uuid.uuid4().hex
            seq = 1 if latest is None else latest.seq + 1
            self._conn.execute(
                "INSERT INTO workflows(id, seq, target, input_json, input_digest, status, created_at, updated_at,"
                " executions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (run_id, seq, target, input_json, input_digest, RUNNING, now, now),
            )
            run = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows WHERE id = ?", (run_id,))
            assert run is not None
            return run

    @staticmethod
    def _mismatch(run: Run, target: str, input_json: str) -> str:
        what = "target" if run.target != target else "inputs"
        return (
            f"its {run.status} run {run.id[:12]} has {what} "
            f"{_short(run.target if what == 'target' else run.input_json)}, "
            f"not {_short(target if what == 'target' else input_json)}"
        )

    def completed_steps(self, run_id: str) -> dict[str, StepRecord]:
        """Step name -> stored record, for replaying a resumed run."""
        return {step.name: step for step in self.steps(run_id)}

    def record_step(self, run_id: str, name: str, kind: str, output_json: str, *, input_hash: str | None = None,
                    input_preview: str | None = None, outcome: str = "ok") -> StepRecord:
        """Record a completed step; return the stored record (the first recorder's, if we raced one).

        The transaction holds this one INSERT OR IGNORE (and, only when it was ignored, the read of the
        winner), so a retried checkpoint is a no-op and never rewrites what another attempt recorded.
        """
        with self._write("record the step", name):
            now = time.time()
            self._conn.execute(
                f"INSERT OR IGNORE INTO steps(workflow_id, {_STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (run_id, name, kind, output_json, now, input_hash, input_preview, outcome),
            )
            if self._conn.changes() == 1:
                return StepRecord(name, kind, output_json, now, input_hash, input_preview, outcome)
            rows = query(self._conn, f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = ? AND step_name = ?",
                         (run_id, name))
        return StepRecord(*rows[0])

    def mark_replicated(self, run_id: str, name: str) -> float:
        """Record that the replica confirmed this step (its own small transaction, after the step's)."""
        with self._write("record the replication confirmation", name):
            now = time.time()
            self._conn.execute("UPDATE steps SET replicated_at = ? WHERE workflow_id = ? AND step_name = ?",
                               (now, run_id, name))
        return now

    def begin_attempt(self, run_id: str, name: str, request_hash: str) -> int:
        """Commit the intent to send one LLM request for step ``name``; return its attempt number."""
        with self._write("record the LLM attempt", name):
            rows = query(self._conn, "SELECT COALESCE(MAX(attempt), 0) + 1 FROM attempts"
                                     " WHERE workflow_id = ? AND step_name = ?", (run_id, name))
            number = int(rows[0][0])
            self._conn.execute(
                "INSERT INTO attempts(workflow_id, step_name, attempt, request_hash, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (run_id, name, number, request_hash, time.time()))
        return number

    def end_attempt(self, run_id: str, name: str, attempt: int, outcome: str) -> None:
        """Mark an attempt that got an answer we will not record (an error), so it is not in flight."""
        with self._write("record the LLM attempt's outcome", name):
            self._conn.execute(
                "UPDATE attempts SET outcome = ? WHERE workflow_id = ? AND step_name = ? AND attempt = ?",
                (outcome, run_id, name, attempt))

    def record_answer(self, run_id: str, name: str, attempt: int, execution: int, usage: Usage,
                      latency_s: float, cost_usd: float | None) -> None:
        """An LLM answer arrived: its spend goes to the ledger (and the attempt is marked answered) before
        the step is recorded, so a crash in between still shows the money as spent."""
        with self._write("record the LLM cost", name):
            self._conn.execute(
                "INSERT OR IGNORE INTO llm_ledger(workflow_id, step_name, event, execution, model, input_tokens,"
                " cached_tokens, output_tokens, latency_s, cost_usd, recorded_at)"
                " VALUES (?, ?, 'call', ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, execution, usage.model, usage.input_tokens, usage.cached_tokens,
                 usage.output_tokens, latency_s, cost_usd, time.time()))
            self._conn.execute("UPDATE attempts SET outcome = 'answered'"
                               " WHERE workflow_id = ? AND step_name = ? AND attempt = ?", (run_id, name, attempt))

    def record_replays(self, run_id: str, execution: int, replays: list[tuple[str, Usage, float | None]]) -> None:
        """What replaying recorded calls saved in one execution of the run: one transaction for all."""
        if not replays:
            return
        with self._write("record replayed LLM calls"):
            now = time.time()
            self._conn.executemany(
                "INSERT OR IGNORE INTO llm_ledger(workflow_id, step_name, event, execution, model, input_tokens,"
                " cached_tokens, output_tokens, latency_s, cost_usd, recorded_at)"
                " VALUES (?, ?, 'replay', ?, ?, ?, ?, ?, NULL, ?, ?)",
                [(run_id, name, execution, u.model, u.input_tokens, u.cached_tokens, u.output_tokens, cost, now)
                 for name, u, cost in replays])

    def recorded_calls(self, run_id: str) -> dict[str, tuple[Usage, float | None]]:
        """Step name -> the usage and cost of its (first) recorded call, for pricing replays."""
        with self._lock:
            rows = query(self._conn, "SELECT step_name, model, input_tokens, cached_tokens, output_tokens, cost_usd"
                                     " FROM llm_ledger WHERE workflow_id = ? AND event = 'call' ORDER BY id DESC",
                         (run_id,))
        return {name: (Usage(model, inp, cached, out), cost) for name, model, inp, cached, out, cost in rows}

    def spend(self, run_id: str | None = None) -> Spend:
        """Spend, calls, savings and in-flight estimate for one run, or for every run of the agent."""
        where, params = ("WHERE workflow_id = ?", (run_id,)) if run_id else ("", ())
        with self._lock:
            (spent, calls, unpriced, saved, replayed, inp, out), = query(self._conn, f"""
                SELECT COALESCE(SUM(CASE WHEN event = 'call' THEN cost_usd END), 0),
                       COUNT(CASE WHEN event = 'call' THEN 1 END),
                       COUNT(CASE WHEN event = 'call' AND cost_usd IS NULL THEN 1 END),
                       COALESCE(SUM(CASE WHEN event = 'replay' THEN cost_usd END), 0),
                       COUNT(CASE WHEN event = 'replay' THEN 1 END),
                       COALESCE(SUM(CASE WHEN event = 'call' THEN input_tokens END), 0),
                       COALESCE(SUM(CASE WHEN event = 'call' THEN output_tokens END), 0)
                FROM llm_ledger {where}""", params)
            awhere = "AND a.workflow_id = ?" if run_id else ""
            (in_flight,), = query(self._conn, f"""
                SELECT COUNT(*) FROM attempts a
                WHERE a.outcome IS NULL {awhere}
                  AND NOT (EXISTS (SELECT 1 FROM steps s WHERE s.workflow_id = a.workflow_id
                                                          AND s.step_name = a.step_name)
                           AND a.attempt = (SELECT MAX(b.attempt) FROM attempts b WHERE b.workflow_id = a.workflow_id
                                                                                 AND b.step_name = a.step_name))""",
                                  params)
        priced = calls - unpriced
        estimate = None if priced == 0 else in_flight * spent / priced
        return Spend(round(spent, 10), calls, unpriced, round(saved, 10), replayed, in_flight,
                     None if estimate is None else round(estimate, 10), inp, out)

    def ledger_events(self) -> list[tuple[float, str, float]]:
        """(recorded_at, 'call' | 'replay', USD) of every priced ledger row, oldest first: spend over time."""
        with self._lock:
            rows = query(self._conn, "SELECT recorded_at, event, cost_usd FROM llm_ledger"
                                     " WHERE cost_usd IS NOT NULL ORDER BY recorded_at")
        return [(float(at), str(event), float(cost)) for at, event, cost in rows]

    def attempts(self, run_id: str) -> list[Attempt]:
        with self._lock:
            rows = query(self._conn, "SELECT step_name, attempt, request_hash, started_at FROM attempts"
                                     " WHERE workflow_id = ? ORDER BY started_at, attempt", (run_id,))
        return [Attempt(*r) for r in rows]

    def in_flight(self, run_id: str) -> list[Attempt]:
        """The latest attempt of every LLM step that was started but never recorded as completed."""
        with self._lock:
            rows = query(self._conn, """
                SELECT a.step_name, a.attempt, a.request_hash, a.started_at FROM attempts a
                WHERE a.workflow_id = ?1
                  AND a.attempt = (SELECT MAX(attempt) FROM attempts b
                                   WHERE b.workflow_id = ?1 AND b.step_name = a.step_name)
                  AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.workflow_id = ?1 AND s.step_name = a.step_name)
                ORDER BY a.started_at""", (run_id,))
        return [Attempt(*r) for r in rows]

    def fork_run(self, source_id: str, keep: int, *, input_json: str | None = None,
                 input_digest: str | None = None) -> Run:
        """Start a new open run that copies the first ``keep`` completed steps of ``source_id``.

        The copied steps replay; every later step runs afresh. An open source run is superseded.
        """
        with self._write("fork the run"):
            source = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows WHERE id = ?", (source_id,))
            latest = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows ORDER BY seq DESC LIMIT 1", ())
            assert source is not None and latest is not None
            now = time.time()
            self._conn.execute("UPDATE workflows SET status = ?, updated_at = ?, finished_at = ?"
                               " WHERE status = ?", (SUPERSEDED, now, now, RUNNING))
            run_id = uuid.uuid4().hex
            self._conn.execute(
                "INSERT INTO workflows(id, seq, target, input_json, input_digest, status, created_at, updated_at,"
                " forked_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, latest.seq + 1, source.target, input_json or source.input_json,
                 input_digest or source.input_digest, RUNNING, now, now, source.id))
            self._conn.execute(
                f"INSERT INTO steps(workflow_id, {_STEP_COLUMNS}) SELECT ?, {_STEP_COLUMNS_BUT_REPLICATED}, NULL"
                " FROM steps"
                " WHERE workflow_id = ? ORDER BY rowid LIMIT ?", (run_id, source.id, keep))
            run = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows WHERE id = ?", (run_id,))
        assert run is not None
        return run

    def finish_run(self, run_id: str, status: str, *, output_json: str | None = None,
                   error_json: str | None = None) -> Run:
        """Close the run once; a run already closed by another attempt keeps its first outcome."""
        with self._write("finish the run"):
            now = time.time()
            self._conn.execute(
                "UPDATE workflows SET status = ?, output_json = ?, error_json = ?, updated_at = ?,"
                " finished_at = ? WHERE id = ? AND status = ?",
                (status, output_json, error_json, now, now, run_id, RUNNING),
            )
            run = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows WHERE id = ?", (run_id,))
        assert run is not None
        return run

    def reopen(self, run_id: str) -> Run:
        """A failed run becomes the open run again, keeping its completed steps (``agentshards retry``)."""
        with self._write("reopen the run"):
            self._conn.execute("UPDATE workflows SET status = ?, error_json = NULL, finished_at = NULL, updated_at = ?"
                               " WHERE id = ? AND status = ?", (RUNNING, time.time(), run_id, FAILED))
            run = self._one(f"SELECT {_RUN_COLUMNS} FROM workflows WHERE id = ?", (run_id,))
        assert run is not None
        return run

    def runs(self) -> list[Run]:
        with self._lock:
            rows = query(self._conn, f"SELECT {_RUN_COLUMNS} FROM workflows ORDER BY seq")
        return [Run(*r) for r in rows]

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            rows = query(self._conn, f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = ? ORDER BY rowid",
                         (run_id,))
        return [StepRecord(*r) for r in rows]

    def _one(self, sql: str, params: tuple[object, ...]) -> Run | None:
        rows = query(self._conn, sql, params)
        return Run(*rows[0]) if rows else None
