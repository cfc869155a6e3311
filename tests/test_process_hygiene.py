"""Process hygiene: what runs between fork and exec, which pids get signalled, who may restart Litestream,
what a failed start or unregister leaves behind, and what a bad result file does to the supervisor loop."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from agentshards import LitestreamConfig, ReplicationError, ShardConfig, SupervisorConfig
from agentshards._base import proc
from agentshards._core.shard import open_shard
from agentshards._fleet.supervisor import RESTARTING, SUCCEEDED, Supervisor
from agentshards._fleet.zygote import Zygote
from agentshards._replication.litestream import Litestream
from agentshards._replication.replica import parse_replica
from agentshards._replication.replication import Replication
from agentshards._replication.states import GAVE_UP

from agent_process import TESTS_DIR

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def _wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# -- between fork and exec --------------------------------------------------------------------------------

PDEATHSIG_OF_SELF = ("import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); "
                     "print(v.value)")  # PR_GET_PDEATHSIG


def test_the_parent_death_signal_is_set_without_loading_a_library_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a multi-threaded parent, dlopen/dlsym between fork and exec can deadlock on a lock another thread
    held at the fork: ``prctl`` is resolved at import, and the child only calls it."""
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a library was loaded between fork and exec")

    monkeypatch.setattr(ctypes, "CDLL", no_loading)
    monkeypatch.setattr(ctypes.cdll, "LoadLibrary", no_loading)
    child = proc.popen_from_long_lived_thread([sys.executable, "-c", PDEATHSIG_OF_SELF], stdout=-1)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0 and int(out) == signal.SIGTERM  # and the signal is really set


# -- the zygote never signals a pid it no longer owns -------------------------------------------------------

def test_a_killed_zygote_leaves_no_worker_pid_to_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the zygote is gone its workers are orphans: when they die the pid may be reused by anything. The
    kernel kills them (parent-death signal SIGKILL); the supervisor side never signals their pids."""
    results = tmp_path / ".fleet" / "results"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "data_dir": str(tmp_path / "d"), "target": "sample_agents:slow_step", "app_dir": str(TESTS_DIR),
        "results_dir": str(results), "shard": asdict(ShardConfig()),
        "agents": [{"agent_id": "slow", "inputs": {"seconds": 60.0, "timeout_s": 120.0}}]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT)])}
    zygote = Zygote(env, TESTS_DIR, tmp_path / "workers.log")
    worker = zygote.spawn(spec)
    signalled: list[int] = []
    real_kill = os.kill

    def recording_kill(pid: int, sig: int) -> None:
        signalled.append(pid)
        real_kill(pid, sig)

    try:
        _wait_for(lambda: (results.parent / "logs" / "slow.log").exists(), "the worker did not start its agent")
        monkeypatch.setattr(os, "kill", recording_kill)
        assert zygote._proc is not None
        real_kill(zygote._proc.pid, signal.SIGKILL)
        _wait_for(lambda: worker.poll() is not None, "the worker was not reported dead")
        monkeypatch.undo()
        assert worker.poll() == -signal.SIGKILL
        assert worker.pid not in signalled
        _wait_for(lambda: not _alive(worker.pid), "the orphaned worker outlived its zygote")
    finally:
        monkeypatch.undo()
        zygote.stop()
        if _alive(worker.pid):
            real_kill(worker.pid, signal.SIGKILL)


def test_a_worker_whose_exit_is_read_while_spawn_records_it_is_not_counted_live(tmp_path: Path) -> None:
    """The interleaving that made a dead worker count as live (and its pid a target for SIGKILL later): its
    exit is read by the reader thread between spawn's look at the exits and its note of the new worker.
    A hook at that look forces it; the worker blocks on its spec (a FIFO) until the hook lets it fail."""
    spec = tmp_path / "spec.json"
    os.mkfifo(spec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT)])}
    zygote = Zygote(env, TESTS_DIR, tmp_path / "workers.log")
    released: list[bool] = []

    def release_worker() -> None:  # it reads "not json" from the FIFO and exits 1
        if not released:
            released.append(True)
            fd = os.open(spec, os.O_WRONLY)
            os.write(fd, b"not json")
            os.close(fd)

    class ExitReadDuringTheLook(dict):  # type: ignore[type-arg]
        def __contains__(self, pid: object) -> bool:
            seen = super().__contains__(pid)  # the worker is blocked on the FIFO: not exited yet
            release_worker()
            _wait_for(lambda: super(ExitReadDuringTheLook, self).__contains__(pid), "the exit was not read")
            zygote._send(f"spawn {tmp_path / 'missing.json'}")  # a later line: the reader is done with the exit
            _wait_for(lambda: not zygote._spawned.empty(), "the reader did not go on")
            return seen

    zygote._exits = ExitReadDuringTheLook()
    try:
        worker = zygote.spawn(spec)
        release_worker()
        _wait_for(lambda: worker.poll() is not None, "the worker's exit was not reported")
        assert worker.poll() == 1
        assert worker.pid not in zygote._live  # so nobody will ever signal its (reusable) pid
    finally:
        release_worker()
        zygote.stop()


# -- Litestream: who restarts it, what a failed start or unregister leaves ----------------------------------

class _SilentLitestream:
    """A Litestream whose control socket stopped answering: what the watchdog restarts."""

    def __init__(self, data_dir: Path, replication_lock: list[Any]) -> None:
        self.config = LitestreamConfig(stall_timeout_s=1.0)
        self.data_dir = data_dir
        self.registered: list[str] = []
        self.locks = replication_lock
        self.restarts: list[bool] = []

    def databases(self, timeout_s: float) -> list[dict[str, Any]]:
        raise TimeoutError("the control socket did not answer")

    def restart(self, reason: str) -> None:
        lock = self.locks[0]
        free: list[bool] = []
        probe = threading.Thread(target=lambda: free.append(lock.acquire(blocking=False)))
        probe.start()
        probe.join()
        if free[0]:
            lock.release()
        self.restarts.append(not free[0])  # True: held (by the caller) while Litestream was restarted


def test_the_watchdog_restarts_litestream_only_under_the_replication_lock(tmp_path: Path) -> None:
    """A confirm's repair stops Litestream, resets a shard and starts it again under Replication's lock;
    the watchdog's restart takes that lock too, so it never lands in the middle of a repair."""
    holder: list[Any] = []
    litestream = _SilentLitestream(tmp_path, holder)
    replication = Replication(litestream, store=None, target=None)  # type: ignore[arg-type]
    holder.append(replication._lock)
    replication._answered_at = replication._stall_restarted_at = time.monotonic() - 100  # silent for 100 s
    assert replication.restart_if_stalled(force_check=True)
    assert litestream.restarts == [True]


@pytest.fixture
def litestream(tmp_path: Path) -> Any:
    ls = Litestream(tmp_path / "d", parse_replica(str(tmp_path / "r")), LitestreamConfig(restart_backoff_s=0.01),
                    os.environ)
    yield ls
    ls.stop()


def test_an_unregister_that_failed_keeps_the_agent_registered(litestream: Litestream) -> None:
    litestream.start()
    open_shard(litestream.data_dir, "a", ShardConfig()).close()
    litestream.register("a")
    assert litestream._proc is not None
    litestream._proc.kill()  # the call below cannot reach it
    litestream._proc.wait()
    with pytest.raises(OSError):
        litestream.unregister("a")
    assert litestream.registered == ["a"]  # not forgotten: it is still replicated after the restart
    assert litestream.ensure_running()
    assert [Path(db["path"]).name for db in litestream.databases()] == ["a.db"]
    litestream.unregister("a")  # and can be let go for real now
    assert litestream.registered == [] and litestream.databases() == []


def test_a_failed_start_leaves_no_litestream_running(litestream: Litestream) -> None:
    open_shard(litestream.data_dir, "a", ShardConfig()).close()
    litestream._state.registered["a"] = "bogus://replica"  # a registration the new process refuses
    with pytest.raises(ReplicationError, match="unsupported replica URL scheme"):
        litestream.start()
    assert litestream.pid is not None and not _alive(litestream.pid)
    assert not litestream.pid_path.exists()


# -- a bad result file ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["{not json", "[]", '{"status": "failed"}', '{"status": "weird", "final": true}',
                                     '{"status": "failed", "final": true, "error": "boom"}', '"succeeded"'])
def test_a_malformed_result_file_restarts_the_agent_instead_of_stopping_the_loop(tmp_path: Path,
                                                                                 content: str) -> None:
    supervisor = Supervisor(tmp_path, TESTS_DIR, SupervisorConfig(max_restarts=1), {})
    supervisor.add("a", "sample_agents:two_steps", {"x": 1})
    state = supervisor.agents["a"]
    supervisor.results_dir.mkdir(parents=True)
    (supervisor.results_dir / "a.json").write_text(content)
    supervisor._settle(state, "worker 123 exited with 0")
    assert state.status == RESTARTING and "worker 123 exited with 0" in str(state.reason)
    assert "result file a.json" in str(state.reason)
    (supervisor.results_dir / "a.json").write_text(content)
    supervisor._settle(state, "worker 124 exited with 0")  # the restart limit ends it (gave_up), not stuck
    assert state.status == GAVE_UP and supervisor.done()
    (supervisor.results_dir / "a.json").write_text('{"status": "succeeded", "result": 1}')
    supervisor.add("b", "sample_agents:two_steps", {"x": 1})
    (supervisor.results_dir / "b.json").write_text('{"status": "succeeded", "result": 1}')
    supervisor._settle(supervisor.agents["b"], "worker 125 exited with 0")
    assert supervisor.agents["b"].status == SUCCEEDED and supervisor.agents["b"].result == 1
