"""``LeaseKeeper``: a node's hold on its lease, kept by threads of its own.

The supervisor loop can block for seconds (a zygote spawn, a Litestream restart), and a process can be
paused; renewing from that loop let a node keep writing after its lease had run out. Here one thread
renews every third of the TTL, and another fences the node at the lease's ``deadline`` (the start of the
last successful renewal plus TTL minus margin, on this node's monotonic clock) unless a renewal moved it:
it calls the fences its owner registered (SIGKILL Litestream, SIGKILL the workers), whatever the rest of
the process is doing. A renewal answered by another node's body fences at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .._base.errors import LeaseError
from .lease import Lease

log = logging.getLogger("agentshards")

Fence = Callable[[LeaseError], None]
RenewalListener = Callable[[float], None]


class LeaseKeeper:
    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost: LeaseError | None = None
        self._fences: list[Fence] = []
        self._listeners: list[RenewalListener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retry_s = min(1.0, lease.config.ttl_s / 10)  # after a failed renewal: several tries before the deadline

    def acquire(self) -> None:
        """Take the lease (see ``Lease.acquire``), then start renewing and watching its deadline."""
        self.lease.acquire()
        for loop, name in ((self._renew_loop, "renew"), (self._fence_loop, "fence")):
            thread = threading.Thread(target=loop, daemon=True, name=f"agentshards-lease-{name}")
            thread.start()
            self._threads.append(thread)

    def add_fence(self, fence: Fence) -> None:
        """Call ``fence`` once, from the keeper's thread, when the lease is lost or about to lapse (at once if
        it already was). A fence must be quick and must not block on what the supervisor loop holds."""
        with self._lock:
            error = self.lost
            if error is None:
                self._fences.append(fence)
                return
        fence(error)

    def add_renewal_listener(self, listener: RenewalListener) -> None:
        """Call ``listener(deadline)`` now and after each successful renewal, from the keeper's thread, with the
        lease's new deadline (this node's monotonic clock): how a fleet tells its workers when to stop writing
        (they fence themselves when the supervisor is too paused to). Quick and non-blocking, like a fence."""
        with self._lock:
            self._listeners.append(listener)
        listener(self.lease.deadline())

    def release(self) -> None:
        """Stop renewing; delete the lease if this node still holds it within its deadline."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1.0)  # a renewal stuck on a dead connection is left to its daemon thread
        self._threads = []
        if self.lost is None:
            try:
                self.lease.release()
            except Exception as exc:  # the store's transport errors: never let them replace the caller's outcome
                log.warning("could not delete the lease on %s (%s: %s); the next node on this prefix will need "
                            "--take-over", self.lease.target.describe(), type(exc).__name__, exc)

    def _renew_loop(self) -> None:
        clock = self.lease.clock
        next_at = self.lease.renew_at()
        while not self._stop.wait(max(0.0, next_at - clock())):
            if clock() >= self.lease.deadline():  # woken past it (a paused process): fenced, not renewed
                self._fence(self._lapsed())
                return
            try:
                self.lease.renew()
            except LeaseError as exc:
                self._fence(exc)
                return
            except Exception as exc:  # the store's transport errors: the renewal may yet land; the deadline decides
                log.warning("could not renew the lease on %s (%s: %s); trying again in %.1fs",
                            self.lease.target.describe(), type(exc).__name__, exc, self._retry_s)
                next_at = clock() + self._retry_s
            else:
                next_at = self.lease.renew_at()
                self._renewed()

    def _fence_loop(self) -> None:
        clock = self.lease.clock
        while True:
            left = self.lease.deadline() - clock()
            if left <= 0:
                self._fence(self._lapsed())
                return
            if self._stop.wait(left):
                return

    def _lapsed(self) -> LeaseError:
        config = self.lease.config
        return LeaseError(
            f"could not renew the lease on {self.lease.target.describe()} for "
            f"{config.ttl_s - config.margin:.1f}s (TTL minus margin)",
            hint="is S3 reachable from this node? it stopped its agents and Litestream before another node "
                 "may take the prefix; run it again (or recover elsewhere) once S3 answers")

    def _renewed(self) -> None:
        deadline = self.lease.deadline()
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(deadline)
            except Exception:  # the deadline is still kept here; a worker then fences early, never late
                log.exception("a lease renewal listener failed")

    def _fence(self, error: LeaseError) -> None:
        with self._lock:
            if self.lost is not None:
                return
            self.lost = error
            fences, self._fences = self._fences, []
        self._stop.set()
        log.error("fencing this node: %s", error)
        for fence in fences:
            try:
                fence(error)
            except Exception:  # one failed fence must not spare the others
                log.exception("a fence failed while stopping this node")
