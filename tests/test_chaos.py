"""CI runs the chaos suite's short form (scripts/chaos.py): real SIGKILLs, S3 faults, hostile input.

It is one test because the suite is one program with its own table; its exit status says whether every
invariant held (no completed step lost, no completed LLM call repeated, no corrupt restore, every
hostile input refused, the canary secret nowhere).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"


@pytest.mark.timeout(900)
def test_chaos_short_form_holds_every_invariant() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=880)
    table = proc.stdout[proc.stdout.find("\nscenario"):]
    assert proc.returncode == 0, f"{table}\n--- stderr tail ---\n{proc.stderr[-3000:]}"
    assert "all invariants held" in proc.stdout
    for scenario in ("SIGKILL random workers", "node loss", "S3 connections hang", "bucket wiped",
                     "restore soak", "disk full", "hostile"):
        assert scenario in table, f"scenario {scenario!r} did not run:\n{table}"
