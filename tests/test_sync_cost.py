"""One agent.step costs exactly one commit and (at synchronous=FULL) one sync: durability is not batched away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import pytest

from agentshards import RunConfig, ShardConfig
from agentshards._core.agent import Agent
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard


class CountingVFS(apsw.VFS):
    """Counts xSync calls on every file SQLite opens through it."""

    def __init__(self) -> None:
        self.syncs = 0
        super().__init__("counting-syncs", "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return CountingFile(self, name, flags)


class CountingFile(apsw.VFSFile):
    def __init__(self, vfs: CountingVFS, name: Any, flags: list[int]) -> None:
        self._vfs = vfs
        super().__init__("", name, flags)

    def xSync(self, flags: int) -> None:
        self._vfs.syncs += 1
        super().xSync(flags)


@pytest.fixture(scope="module")
def vfs() -> CountingVFS:
    return CountingVFS()


@pytest.mark.parametrize(("synchronous", "syncs_per_step"), [("FULL", 1), ("NORMAL", 0)])
def test_one_step_is_one_commit_and_one_sync(tmp_path: Path, vfs: CountingVFS, synchronous: str,
                                             syncs_per_step: int) -> None:
    shard = ShardConfig(synchronous=synchronous, vfs="counting-syncs")  # type: ignore[arg-type]
    conn = open_shard(tmp_path, "c", shard)
    commits = []
    conn.set_commit_hook(lambda: commits.append(1) or False)
    journal = Journal(conn, "c")
    run = journal.begin_run("m:f", "{}", "d")
    agent = Agent(journal, run.id, RunConfig(shard=shard), execution=run.executions)
    agent.step("warm", lambda: {"x": 1})
    for i in range(20):
        commits.clear()
        before = vfs.syncs
        agent.step("s", lambda i=i: {"i": i, "payload": "p" * 1000})
        assert len(commits) == 1, f"step {i} made {len(commits)} commits"
        assert vfs.syncs - before == syncs_per_step, f"step {i} made {vfs.syncs - before} syncs"
    journal.close()
