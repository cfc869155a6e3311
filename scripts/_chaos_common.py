"""What the chaos scenarios share: the result row, the S3 helpers and the counting of repeated LLM calls."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
for _path in (str(TESTS), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import apsw  # noqa: E402
import boto3  # noqa: E402

CLI = [sys.executable, "-m", "agentshards"]
CANARY = "chaos-canary-secret-7f3a9c"


OK, BROKEN, SKIPPED = "ok", "BROKEN", "skipped"


@dataclass
class Row:
    """One scenario's totals. Any steps lost, completed calls repeated or corrupt restores fail the run.

    A scenario that could not run here (a tmpfs needs root) or whose fault never happened (every SIGKILL
    came too late) checked nothing: it is "skipped" with the reason, never "ok", so a gate that did not
    exercise a fault cannot pass for one that held.
    """

    scenario: str
    runs: int = 0
    faults: int = 0
    steps_lost: int = 0
    completed_repeated: int = 0
    corrupt_restores: int = 0
    errors_surfaced: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    skipped: str = ""  # why the scenario checked nothing; empty when it ran

    def skip(self, reason: str) -> Row:
        self.skipped = reason
        return self

    @property
    def broken(self) -> bool:
        return self.steps_lost > 0 or self.completed_repeated > 0 or self.corrupt_restores > 0

    @property
    def skip_reason(self) -> str:
        return self.skipped or ("nothing ran" if self.runs == 0 else "")

    @property
    def status(self) -> str:
        """BROKEN when an invariant broke (even in a partly skipped scenario), else skipped, else ok."""
        if self.broken:
            return BROKEN
        return SKIPPED if self.skip_reason else OK

    def add(self, other: Row) -> None:
        """Fold another round of the same scenario in; a round that was skipped keeps the total skipped."""
        for attr in ("runs", "faults", "steps_lost", "completed_repeated", "corrupt_restores", "errors_surfaced",
                     "seconds"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        self.notes += other.notes
        self.skipped = self.skipped or other.skip_reason

    def report(self) -> dict[str, Any]:
        """The row as the JSON report carries it."""
        return {"scenario": self.scenario, "status": self.status, "skipped": self.skip_reason, "runs": self.runs,
                "faults": self.faults, "steps_lost": self.steps_lost, "completed_repeated": self.completed_repeated,
                "corrupt_restores": self.corrupt_restores, "errors_surfaced": self.errors_surfaced,
                "seconds": round(self.seconds, 1), "notes": list(dict.fromkeys(self.notes))}


@dataclass
class S3:
    """The loopback S3 server (moto) the scenarios share, and an environment that reaches it directly."""

    port: int
    env: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def wipe(self, bucket: str) -> int:
        client = self.client()
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)
        return len(keys)


def repeats(log: list[Any], results: dict[str, list[dict[str, Any]]]) -> int:
    """Completed calls requested again: a request for the same prompt after the one whose answer (by the
    fake server's serial number) the agent recorded."""
    from agentshards.testing._fakellm import serial_of

    repeated = 0
    for agent_id, result in results.items():
        for entry in result:
            serial = serial_of(str(entry["id"]))
            key = (agent_id, f"call {entry['i']} of {len(result)}")
            repeated += sum(1 for r in log if r.serial > serial
                            and (r.body.get("user"), r.body["messages"][0]["content"]) == key)
    return repeated


def shard_rows(path: Path) -> tuple[list[tuple[str, str]], bool]:
    """(step name, output) in order, and whether ``integrity_check`` passed, read from a closed copy."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = [(str(n), str(o)) for n, o in conn.execute("SELECT step_name, output_json FROM steps ORDER BY rowid")]
        return rows, ok
    finally:
        conn.close()


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
