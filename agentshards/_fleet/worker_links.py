"""What a fleet with a replica gives its workers besides their spec: a confirmation socket and a fence.

Workers hold no replica and no AWS credential, so ``replicated`` steps are confirmed by the supervisor
(``confirm.py``); and a paused supervisor cannot kill its workers when its lease lapses, so they read its
lease deadline and stop writing by themselves (``fence_file.py``). Opened once per fleet, after the lease and
Litestream, closed before them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base.config import RunConfig
from .confirm import ConfirmServer, confirm_socket_for
from .fence_file import DeadlineWriter, fence_path

if TYPE_CHECKING:
    from .._replication.lease_keeper import LeaseKeeper
    from .._replication.replication import Replication


def run_spec(config: RunConfig) -> dict[str, Any]:
    """The fleet's durability settings, for every worker's RunConfig (the rest is the worker's own edge)."""
    return {"durability": config.durability, "llm_durability": config.llm_durability,
            "replication_timeout_s": config.replication_timeout_s}


class WorkerLinks:
    def __init__(self, fleet_dir: Path, replication: Replication, lease: LeaseKeeper,
                 serves: Callable[[str], bool]) -> None:
        self.server = ConfirmServer(confirm_socket_for(fleet_dir), replication.confirm, serves)
        self.deadline = DeadlineWriter(fence_path(fleet_dir))
        try:
            lease.add_renewal_listener(self.deadline.write)
            self.server.start()
        except BaseException:
            self.deadline.close()
            raise

    @property
    def spec(self) -> dict[str, Any]:
        return {"confirm_socket": str(self.server.path), "fence": str(self.deadline.path)}

    def close(self) -> None:
        self.server.stop()
        self.deadline.close()
