"""`agentshards node` process trees for tests and the chaos suite: each node is a process group of its own
(supervisor, zygote, workers, Litestream) with its own data dir, so it can be SIGKILLed or SIGSTOPped whole."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from agent_process import TESTS_DIR

CLI = [sys.executable, "-m", "agentshards"]


class Nodes:
    """Start `agentshards node` process trees; stop every one of them at the end, whatever happened."""

    def __init__(self, tmp_path: Path, replica: str, env: dict[str, str], ttl: float = 5.0) -> None:
        self.tmp_path, self.replica, self.env, self.ttl = tmp_path, replica, env, ttl
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, capacity: int = 15, env: dict[str, str] | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        data = self.tmp_path / name
        log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child writes it; closed on exit
        proc = subprocess.Popen([*CLI, "node", "--replica", self.replica, "--data-dir", str(data),
                                 "--app-dir", str(TESTS_DIR), "--capacity", str(capacity), "--node-id", name,
                                 "--lease-ttl", str(self.ttl), "--agents-per-worker", "5", *extra],
                                env=env or self.env, cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.procs[name].pid, sig)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in self.procs.values():  # the rest of each tree (workers, Litestream) goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
