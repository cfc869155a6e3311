"""The worker zygote: one process that imports the heavy modules once and forks every fleet worker.

Why: a fresh worker interpreter that imports openai, pydantic, httpx, tenacity and apsw costs ~50 MB of
private memory and about a second of CPU. Forked from a process that already holds those modules (and
froze them out of the garbage collector's reach, so the collector does not write to their pages), a
worker shares them copy-on-write: ``scripts/bench_zygote.py`` measured 5.9 MB PSS per idle forked worker
against 44.8 MB for a fresh one, and 2 ms per fork against 630 ms per start.

The zygote runs ``python -m agentshards._fleet.zygote`` with the workers' environment (no AWS credential) and is
single-threaded, so forking it is safe. It talks to the supervisor over its stdin/stdout, one line each:

    supervisor -> zygote    spawn SPEC_PATH          fork a worker for that spec
                            signal PID SIGNUM        signal one of its live workers
    zygote -> supervisor    spawned PID
                            exit PID CODE            a worker ended (CODE as Popen: -N for signal N)

The zygote reaps its workers itself and only signals workers it has not reaped yet, so a recycled pid is
never signalled. It dies with the supervisor (parent-death signal), and workers die with it: their
parent-death signal is SIGKILL, so the supervisor never signals a worker pid itself (once the zygote is
gone, nobody it could ask knows whether that pid is still the worker's).
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from .._base.errors import AgentShardsError
from .._base.proc import die_with_parent

SPAWN_TIMEOUT_S = 120.0
"""The first spawn waits for the zygote's imports: seconds on a loaded machine."""

PRELOAD = ("agentshards._fleet.worker", "agentshards._fleet.run", "agentshards._core.llm", "agentshards._core.journal",
           "agentshards._core.agent", "apsw", "tenacity", "pydantic", "openai", "openai.types.chat",
           "openai.types.responses")


class ForkedWorker:
    """A worker forked by the zygote, with the part of ``subprocess.Popen``'s interface the supervisor uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.args = ["agentshards-worker", str(pid)]

    @property
    def returncode(self) -> int | None:
        return self.zygote.exit_code(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self.zygote.signal(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.01)
        return code


class Zygote:
    """The supervisor's handle on the zygote process: spawn, signal, learn exit codes, stop."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log_path: Path) -> None:
        self.env, self.cwd, self.log_path = dict(env), cwd, log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._spawned: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._live: set[int] = set()  # the current zygote's unreaped workers (a new set per zygote process)

    def exit_code(self, pid: int) -> int | None:
        return self._exits.get(pid)

    def spawn(self, spec_path: Path) -> ForkedWorker:
        """Fork one worker; starts (or restarts) the zygote first when it is not running."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._send(f"spawn {spec_path}")
            try:
                pid = self._spawned.get(timeout=SPAWN_TIMEOUT_S)
            except queue.Empty:
                raise AgentShardsError(f"the worker zygote did not fork within {SPAWN_TIMEOUT_S:.0f}s",
                                       hint=f"see {self.log_path}") from None
            if pid < 0:
                raise AgentShardsError("the worker zygote exited before forking a worker",
                                       hint=f"see {self.log_path}")
            return ForkedWorker(self, pid)  # the reader counted it live, in order with its exit line

    def signal(self, pid: int, sig: int) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._send(f"signal {pid} {int(sig)}")

    def kill(self) -> None:
        """SIGKILL the zygote now, from any thread, without the lock a spawn may hold: its workers get their
        parent-death signal."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the zygote's stdin (it exits, killing any worker left) and wait for it."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _start(self) -> None:
        self._spawned, self._live = queue.Queue(), set()
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen([sys.executable, "-m", "agentshards._fleet.zygote"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=logf, env=self.env, cwd=str(self.cwd),
                                          preexec_fn=die_with_parent)
        threading.Thread(target=self._read, args=(self._proc, self._spawned, self._live), daemon=True,
                         name="agentshards-zygote-reader").start()

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def _read(self, proc: subprocess.Popen[bytes], spawned: queue.Queue[int], live: set[int]) -> None:
        """One per zygote process, with that process's queue and worker set: a late cleanup of a dead zygote
        never touches the workers of its successor. Only this thread changes ``live``, in the order the
        zygote wrote its lines ("spawned" before that pid's "exit"), so a worker that ended at once is never
        counted live after its exit was seen."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            word, *rest = raw.decode().split()
            if word == "spawned":
                live.add(int(rest[0]))
                spawned.put(int(rest[0]))
            elif word == "exit":
                pid, code = int(rest[0]), int(rest[1])
                self._exits[pid] = code
                live.discard(pid)
        # The zygote is gone, and the kernel sent each of its workers SIGKILL (their parent-death signal)
        # as it exited. They are dead or dying; their pids are not ours to signal (they may be reused).
        proc.wait()
        spawned.put(-1)
        for pid in list(live):
            self._exits.setdefault(pid, -signal.SIGKILL)
            live.discard(pid)


# -- the zygote process -------------------------------------------------------------------------------------

def _fork_worker(spec_path: str, control: list[int]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in control:
            os.close(fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # no stdin, as before (the zygote's is the control pipe)
        os.dup2(2, 1)  # the worker's stdout joins its stderr in workers.log
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent(signal.SIGKILL)  # a handler installed by agent code cannot keep an orphan alive
        from .worker import main

        code = main(["agentshards._fleet.worker", spec_path])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(out: IO[bytes], live: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        live.discard(pid)
        out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
        out.flush()


def preload() -> None:
    """Import what every worker needs (PRELOAD, and what an OpenAI client imports lazily)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    _warm_openai()
    _warm_prices()


def _warm_openai() -> None:
    """Build and drop one client (no key, no connection) and touch its lazily imported resources: the ~80
    modules a worker's first LLM call would import (HTTP stack, TLS trust store, chat and responses
    resources) are then loaded once, here, and shared."""
    import openai

    client = openai.OpenAI(api_key="unused-by-the-zygote", base_url="http://127.0.0.1:9/v1", max_retries=0)
    try:
        _ = (client.chat.completions, client.responses)
    finally:
        client.close()


def _warm_prices() -> None:
    """Load the price catalogue (~30 MB once built) before forking: every worker prices its LLM calls, and
    a catalogue built in each worker would cost that much per worker instead of once."""
    from .._base.prices import catalogue_cost

    try:
        catalogue_cost("gpt-4o-mini", 1, 0, 1)
    except Exception:  # an unusable catalogue costs each worker its own load, never the zygote's start
        import logging

        logging.getLogger("agentshards").warning("the price catalogue could not be preloaded", exc_info=True)


def main() -> int:
    import gc

    preload()
    gc.collect()
    gc.freeze()  # the preloaded objects stay out of collections: their pages stay shared with the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the supervisor's to handle, not ours
    stdin, out = sys.stdin.fileno(), sys.stdout.buffer
    live: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    pending = b""
    while True:
        if selector.select(timeout=0.05):
            chunk = os.read(stdin, 65536)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                word, *args = line.decode().split()
                if word == "spawn":
                    pid = _fork_worker(args[0], [stdin, out.fileno()])
                    live.add(pid)
                    out.write(f"spawned {pid}\n".encode())
                    out.flush()
                elif word == "signal" and int(args[0]) in live:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(args[0]), int(args[1]))
        _reap(out, live)
    for pid in live:  # stdin closed: the supervisor is done with us
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while live:
        pid, _status = os.waitpid(-1, 0)
        live.discard(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
