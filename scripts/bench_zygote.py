"""What forking workers from the zygote saves: PSS and start time of a fleet worker, fresh vs forked.

Baseline: N fresh interpreters that import what a worker imports (agentshards' worker modules, openai,
pydantic, httpx, tenacity, apsw) and build one OpenAI client, as fleet workers did before the zygote.
Measured: N children forked from one process that did the same and froze it out of the GC, as the
zygote does. Both sets idle while their PSS is read (shared pages are split among their sharers).

    python scripts/bench_zygote.py [--workers 10]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replication import mem_kb

from agentshards._fleet.zygote import preload

CHILD = """
import time
from agentshards._fleet.zygote import preload
preload()
print("ready", flush=True)
time.sleep(600)
"""


def fresh(n: int) -> tuple[float, float]:
    """(mean PSS MB, mean seconds to ready) of n fresh interpreters."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE) for _ in range(n)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        ready = (time.perf_counter() - t0) / n
        time.sleep(1.0)
        return sum(mem_kb(p.pid)[1] for p in procs) / n / 1024, ready
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def forked(n: int) -> tuple[float, float, float]:
    """(mean PSS MB of the children, PSS MB of the parent, mean seconds per fork) after preloading here."""
    preload()
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        pids.append(pid)
    per_fork = (time.perf_counter() - t0) / n
    try:
        time.sleep(1.0)
        return sum(mem_kb(p)[1] for p in pids) / n / 1024, mem_kb(os.getpid())[1] / 1024, per_fork
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.workers} workers each way")
    pss_fresh, start_fresh = fresh(args.workers)
    pss_child, pss_parent, per_fork = forked(args.workers)
    total_fresh = pss_fresh * args.workers
    total_forked = pss_child * args.workers + pss_parent
    print(f"fresh interpreters: {pss_fresh:.1f} MB PSS each, {start_fresh * 1000:.0f} ms per start "
          "(all started at once: wall time / N)")
    print(f"forked from the zygote: {pss_child:.1f} MB PSS each plus the zygote's {pss_parent:.1f} MB, "
          f"{per_fork * 1000:.1f} ms per fork")
    print(f"{args.workers} workers: {total_fresh:.0f} MB fresh vs {total_forked:.0f} MB forked "
          f"({total_fresh / total_forked:.1f}x less)")


if __name__ == "__main__":
    main()
