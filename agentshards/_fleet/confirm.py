"""``replicated`` steps in fleet workers: the supervisor confirms them for its workers over a unix socket.

A worker holds no replica: no Litestream socket of its own, no object store, no AWS credential (see
``_base/environ.py``). The supervisor (the Fleet's process) holds all three, so it answers for them: a
``ConfirmServer`` in the data dir (``.fleet/confirm.sock``, or a per-data-dir name in the temp dir when that
path is too long for a unix socket) runs ``Replication.confirm(agent_id, timeout_s)`` for agents this
supervisor runs and for no one else. A worker's agent thread asks through ``SupervisorConfirm``, which turns a
refusal back into the error a run with its own replica raises (ReplicationError, or the LeaseError of a node
fenced off its prefix).

One request per connection, one JSON line each way::

    worker -> supervisor    {"agent_id": "a-1", "timeout_s": 30.0}
    supervisor -> worker    {"ok": true}  or  {"ok": false, "type": "ReplicationError", "message": ..., "hint": ...}

A thread accepts; a bounded pool answers (each answer mostly waits for Litestream's ``sync -wait``).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._base.errors import AgentShardsError, LeaseError, NoReplica, ReplicationError

log = logging.getLogger("agentshards")

Confirm = Callable[[str, float], None]
"""``confirm(agent_id, timeout_s)``: returns once the replica holds everything the agent committed so far."""

supervisor_confirm: contextvars.ContextVar[Confirm | None] = contextvars.ContextVar(
    "agentshards_supervisor_confirm", default=None)
"""Set by a fleet worker in each agent's thread: how ``run_agent`` confirms ``replicated`` steps there, when it
has no replica of its own. Unset everywhere else."""

SOCKET_NAME = "confirm.sock"
_SOCKET_LIMIT = 100  # sun_path is 108 bytes on Linux, keep a margin
_REQUEST_LIMIT = 4096
_REPLY_MARGIN_S = 15.0  # past the confirm's own timeout: Litestream's sync call may take 5 s more
_ERRORS: dict[str, type[AgentShardsError]] = {
    "ReplicationError": ReplicationError, "NoReplica": NoReplica, "LeaseError": LeaseError}


def confirm_socket_for(fleet_dir: Path) -> Path:
    """Inside the fleet dir when short enough for a unix socket, else a per-data-dir name in the temp dir."""
    path = fleet_dir / SOCKET_NAME
    if len(str(path)) <= _SOCKET_LIMIT:
        return path
    digest = hashlib.sha256(str(fleet_dir).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"agentshards-{digest}-confirm.sock"


class ConfirmServer:
    """Answers workers' confirmation requests with ``confirm`` for the agents ``serves`` accepts."""

    def __init__(self, path: Path, confirm: Confirm, serves: Callable[[str], bool], *, threads: int = 32) -> None:
        self.path, self._confirm, self._serves = path, confirm, serves
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agentshards-confirm")
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a dead supervisor's socket: the data-dir lock says it is ours now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: only this user's workers may ask
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(1024)  # a thousand agents finishing a step together all get queued, not refused
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True,
                                        name="agentshards-confirm-accept")
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, answer what was accepted (bounded by the confirms' own timeouts), remove the socket."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            sock.close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._pool.shutdown(wait=True)
        self.path.unlink(missing_ok=True)

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # shut down by stop()
                return
            try:
                self._pool.submit(self._answer, conn)
            except RuntimeError:  # the pool is shutting down: the worker gets a closed connection
                conn.close()
                return

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10.0)  # a request is one short line, sent at once
                request = json.loads(_read_line(conn))
                reply = self._handle(str(request["agent_id"]), float(request["timeout_s"]))
                conn.settimeout(10.0)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError, KeyError, TypeError) as exc:  # a worker gone or a garbled request
                log.warning("a confirmation request on %s failed: %s", self.path, exc)

    def _handle(self, agent_id: str, timeout_s: float) -> dict[str, Any]:
        if not self._serves(agent_id):
            return {"ok": False, "type": "ReplicationError", "message": "this fleet's supervisor does not run it",
                    "hint": "only the supervisor running an agent confirms its steps"}
        try:
            self._confirm(agent_id, timeout_s)
        except AgentShardsError as exc:
            return {"ok": False, "type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        except Exception as exc:  # never a traceback across the socket: the worker gets a ReplicationError
            log.exception("confirming agent %s failed", agent_id)
            return {"ok": False, "type": "ReplicationError", "message": f"{type(exc).__name__}: {exc}",
                    "hint": "see the supervisor's log"}
        return {"ok": True}


class SupervisorConfirm:
    """A worker's ``confirm``: asks its supervisor; raises what a run with its own replica would raise."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, agent_id: str, timeout_s: float) -> None:
        request = json.dumps({"agent_id": agent_id, "timeout_s": timeout_s}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s + _REPLY_MARGIN_S)
                sock.connect(str(self.path))
                sock.sendall(request)
                reply = json.loads(_read_line(sock))
        except (OSError, ValueError) as exc:
            raise ReplicationError(f"the fleet's supervisor did not confirm the replica within {timeout_s:.0f}s: "
                                   f"{type(exc).__name__}: {exc}", agent_id=agent_id,
                                   hint="the step is recorded locally; is the supervisor running? see its log "
                                        "and litestream.log in the data dir") from exc
        if reply.get("ok") is True:
            return
        error = _ERRORS.get(str(reply.get("type")), ReplicationError)
        raise error(str(reply.get("message", "the supervisor could not confirm the replica")), agent_id=agent_id,
                    hint=None if reply.get("hint") is None else str(reply["hint"]))


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(_REQUEST_LIMIT)
        if not chunk:
            raise ConnectionError("the connection closed before a whole line arrived")
        data += chunk
        if len(data) > _REQUEST_LIMIT:
            raise ValueError("a line longer than the protocol allows")
    return data
