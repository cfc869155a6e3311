"""CI runs the chaos suite's short form (scripts/chaos.py): real SIGKILLs, S3 faults, hostile input.

The suite is one program with its own table, run once for this module; its JSON report gives one test per
scenario, so a scenario that could not run here (disk full needs root for its tmpfs) shows as skipped with
the reason, never as passed. The invariants: no completed step lost, no completed LLM call repeated, no
corrupt restore, every hostile input refused, the canary secret nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"
SCENARIOS = ["nodes", "kills", "points", "node", "acked", "litestream", "outage", "errors", "hang", "wipe", "soak",
             "reader", "disk", "restore", "archive", "hostile", "dual"]
EXIT = {"ok": 0, "BROKEN": 1, "skipped": 3}


@dataclass(frozen=True)
class ChaosRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]

    def explain(self) -> str:
        return f"{self.stdout[self.stdout.find(chr(10) + 'scenario'):]}\n--- stderr tail ---\n{self.stderr[-3000:]}"


def _chaos(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 880) -> ChaosRun:
    report = tmp / "chaos.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(report), *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env)
    assert report.exists(), f"chaos.py wrote no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return ChaosRun(proc.returncode, proc.stdout, proc.stderr, json.loads(report.read_text()))


@pytest.fixture(scope="module")
def short_form(tmp_path_factory: pytest.TempPathFactory) -> ChaosRun:
    return _chaos(tmp_path_factory.mktemp("chaos"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", SCENARIOS)
def test_chaos_scenario_holds_every_invariant(short_form: ChaosRun, name: str) -> None:
    row = short_form.report["scenarios"].get(name)
    assert row is not None, f"scenario {name!r} did not report:\n{short_form.explain()}"
    if row["status"] == "skipped":
        pytest.skip(f"{row['scenario']}: {row['skipped']}")
    assert row["status"] == "ok", f"{row['scenario']}: {row['notes']}\n{short_form.explain()}"
    assert row["runs"] > 0


@pytest.mark.timeout(900)
def test_chaos_exit_status_and_table_agree_with_the_report(short_form: ChaosRun) -> None:
    assert sorted(short_form.report["scenarios"]) == sorted(SCENARIOS)  # a new scenario gets listed above
    assert short_form.returncode == EXIT[short_form.report["status"]], short_form.explain()
    for row in short_form.report["scenarios"].values():
        line = next(x for x in short_form.stdout.splitlines() if x.startswith(row["scenario"] + " "))
        assert line.split()[len(row["scenario"].split())] == row["status"], line


def test_a_scenario_that_cannot_run_is_skipped_not_ok(tmp_path: Path) -> None:
    """Where a tmpfs cannot be mounted (as for any user but root), the disk-full scenario checked nothing:
    the table, the JSON report and the exit status say skipped, with the reason."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    mount = fake_bin / "mount"
    mount.write_text("#!/bin/sh\necho 'mount: only root can use \"--types\" option' >&2\nexit 1\n")
    mount.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    run = _chaos(tmp_path, "--only", "disk", env=env, timeout_s=120)
    disk = run.report["scenarios"]["disk"]
    assert (disk["status"], disk["runs"], run.report["status"]) == ("skipped", 0, "skipped"), run.explain()
    assert "needs root" in disk["skipped"] and "only root" in disk["skipped"]
    assert run.returncode == 3, run.explain()
    assert "disk full (tmpfs)" in run.stdout and "skipped: mounting a tmpfs needs root" in run.stdout
    assert "all invariants held" not in run.stdout
