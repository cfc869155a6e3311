"""Fault injection against real fleets, with a table of what held.

    python scripts/chaos.py                    # short form: what CI runs (a few minutes)
    python scripts/chaos.py --duration 1800    # long form: repeat the scenarios, bigger faults, ~30 min
    python scripts/chaos.py --only outage,hang # some scenarios only
    python scripts/chaos.py --json report.json # also write the table as JSON

Every scenario drives real processes: the fake LLM server (serial numbers tell a replayed answer from a
paid one), moto S3 (behind a loopback fault proxy where S3 misbehaves), real Litestream, real SIGKILLs.
The scenarios live in _chaos_fleet.py (processes), _chaos_nodes.py (nodes sharing a prefix), _chaos_s3.py
(replication) and _chaos_files.py (files and hostile input). Exit status 1 when any invariant broke: a
completed step lost, a completed LLM call paid twice, a corrupt or unrestorable replica, an accepted hostile
input or a leaked secret.
A scenario that could not run here (disk full needs root to mount a tmpfs) or whose fault never happened
is "skipped", with the reason, never "ok": exit status 3 when nothing broke but something was skipped,
0 only when every chosen scenario ran and held.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _chaos_common import BROKEN, OK, S3, SKIPPED, Row
from _chaos_files import disk_full, hostile_input, interrupted_archive, interrupted_restore, long_reader
from _chaos_fleet import acked_node_loss, crash_points, dual_owners, node_loss, worker_kills
from _chaos_nodes import node_faults
from _chaos_s3 import litestream_kills, s3_fault, soak
from bench_replication import loopback_s3_env, start_moto

Scenario = Callable[[random.Random, Path, S3], Row]
EXIT = {OK: 0, BROKEN: 1, SKIPPED: 3}


def scenarios(long_form: bool) -> dict[str, Scenario]:
    """Name -> scenario, sized for the short form (CI) or one round of the long form."""
    size = (lambda short, long: long) if long_form else (lambda short, long: short)
    return {
        "kills": lambda r, w, s: worker_kills(r, size(50, 300), w, s),
        "points": lambda r, w, s: crash_points(r, size(3, 10), w, s),
        "node": lambda r, w, s: node_loss(r, size(2, 3), w, s),
        "acked": lambda r, w, s: acked_node_loss(r, size(2, 4), w, s),
        "litestream": lambda r, w, s: litestream_kills(r, size(1, 2), w, s),
        "outage": lambda r, w, s: s3_fault("outage", size(10, 120), r, w, s, stall_s=size(30, 60)),
        "errors": lambda r, w, s: s3_fault("errors", size(20, 60), r, w, s, stall_s=size(30, 60)),
        "hang": lambda r, w, s: s3_fault("hang", size(10, 30), r, w, s, stall_s=size(4, 15)),
        "wipe": lambda r, w, s: s3_fault("wipe", 0, r, w, s, stall_s=30),
        "soak": lambda r, w, s: soak(r, size(20, 120), w, s),
        "reader": lambda r, w, s: long_reader(r, size(5, 30), w, s),
        "disk": disk_full,
        "restore": lambda r, w, s: interrupted_restore(r, size(3, 8), w, s),
        "archive": lambda r, w, s: interrupted_archive(r, size(3, 8), w, s),
        "hostile": hostile_input,
        "dual": dual_owners,
        "nodes": lambda r, w, s: node_faults(r, size(1, 9), w, s),
    }


def overall(rows: dict[str, Row]) -> str:
    """BROKEN if any scenario broke, else skipped if any did not run, else ok."""
    statuses = {row.status for row in rows.values()}
    return BROKEN if BROKEN in statuses else SKIPPED if SKIPPED in statuses else OK


def print_table(rows: dict[str, Row], elapsed: float) -> None:
    print(f"\n{'scenario':<42} {'status':>7} {'runs':>5} {'faults':>6} {'steps lost':>10} {'LLM calls repeated':>18} "
          f"{'corrupt restores':>16} {'errors surfaced':>15} {'seconds':>8}")
    for row in rows.values():
        print(f"{row.scenario:<42} {row.status:>7} {row.runs:>5} {row.faults:>6} {row.steps_lost:>10} "
              f"{row.completed_repeated:>18} {row.corrupt_restores:>16} {row.errors_surfaced:>15} {row.seconds:>8.1f}")
        if row.skip_reason:
            print(f"    skipped: {row.skip_reason}")
        for note in dict.fromkeys(row.notes[-4:]):
            print(f"    {note}")
    print(f"total {elapsed:.0f} s")
    status = overall(rows)
    if status == OK:
        print("all invariants held")
    elif status == SKIPPED:
        print(f"invariants held where checked; SKIPPED: "
              f"{', '.join(r.scenario for r in rows.values() if r.status == SKIPPED)}")
    else:
        print(f"BROKEN: {', '.join(r.scenario for r in rows.values() if r.status == BROKEN)}")


def write_report(path: Path, rows: dict[str, Row], elapsed: float, seed: int) -> None:
    report = {"status": overall(rows), "seed": seed, "seconds": round(elapsed, 1),
              "scenarios": {name: row.report() for name, row in rows.items()}}
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=0.0, help="long form: repeat for about this many seconds")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--json", type=Path, help="also write the table (status per scenario) to this file")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    table = scenarios(args.duration > 0)
    chosen = [n for n in args.only.split(",") if n] or list(table)
    unknown = set(chosen) - set(table)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(table)}")
    moto, port = start_moto()
    s3 = S3(port, loopback_s3_env(f"http://127.0.0.1:{port}", "chaos"))
    os.environ.update({k: v for k, v in s3.env.items() if k.startswith("AWS_")})  # for library calls' defaults
    rows: dict[str, Row] = {}
    started = time.monotonic()
    try:
        while True:
            for name in chosen:
                with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as tmp:
                    t0 = time.monotonic()
                    row = table[name](rng, Path(tmp), s3)
                    row.seconds = time.monotonic() - t0
                rows.setdefault(name, Row(row.scenario)).add(row)
                why = f": {row.skip_reason}" if row.status == SKIPPED else ""
                print(f"[{time.monotonic() - started:7.1f} s] {name}: {row.status}{why} ({row.seconds:.1f} s)",
                      flush=True)
                if row.status == BROKEN:
                    print("\n".join(f"    {note}" for note in row.notes), flush=True)
            if args.duration <= 0 or time.monotonic() - started > args.duration:
                break
    finally:
        moto.terminate()
        moto.wait()
    elapsed = time.monotonic() - started
    print_table(rows, elapsed)
    if args.json is not None:
        write_report(args.json, rows, elapsed, args.seed)
    return EXIT[overall(rows)]


if __name__ == "__main__":
    sys.exit(main())
