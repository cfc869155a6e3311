"""Restore without the binary: the LTX reader checked against Litestream's own restore, and against damage."""

from __future__ import annotations

import os
import random
import shlex
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agentshards import LitestreamConfig, ReplicationError, ShardConfig, restore_agent
from agentshards._base.errors import ReplicaNotRestorable
from agentshards._core.shard import open_shard
from agentshards._core.sqlite import open_connection
from agentshards._replication.litestream import Litestream, find_binary, restore
from agentshards._replication.ltx import DamagedLtx, LtxError, LtxFile, decode, parse_key, restore_plan
from agentshards._replication.objectstore import store_for
from agentshards._replication.replica import parse_replica
from agentshards._replication.restore import _fetch_native


def _ltx(level: int, lo: int, hi: int) -> LtxFile:
    return LtxFile(level, lo, hi, f"agents/a/ltx/{level}/{lo:016x}-{hi:016x}.ltx")


def test_parse_key_reads_both_layouts_and_nothing_else() -> None:
    root = "p/agents/a/"
    assert parse_key(root + "ltx/1/0000000000000002-00000000000000ff.ltx", root) == LtxFile(
        1, 2, 255, root + "ltx/1/0000000000000002-00000000000000ff.ltx")  # a file replica
    assert parse_key(root + "0009/0000000000000001-0000000000000010.ltx", root) == LtxFile(
        9, 1, 16, root + "0009/0000000000000001-0000000000000010.ltx")  # S3
    name = "0000000000000002-0000000000000003.ltx"
    for key in ("ltx/1/2-3.ltx", f"000a/{name}", f"ltx/1/{name}.tmp", f"generations/{name}", f"b/ltx/1/{name}"):
        assert parse_key(root + key, root) is None
    assert parse_key("p/agents/ab/ltx/1/0000000000000002-0000000000000003.ltx", root) is None


def test_restore_plan_takes_the_longest_contiguous_reach() -> None:
    snap, l1, l2 = _ltx(9, 1, 10), _ltx(1, 11, 20), _ltx(2, 11, 30)
    l0 = [_ltx(0, t, t) for t in range(11, 36)]
    assert restore_plan([snap, l1, l2, *l0]) == [snap, l2, *l0[-5:]]  # the level-2 compaction covers the rest
    assert restore_plan([_ltx(0, 1, 1), _ltx(0, 2, 2)]) == [_ltx(0, 1, 1), _ltx(0, 2, 2)]  # first file: a snapshot
    assert restore_plan([_ltx(9, 1, 5), _ltx(9, 1, 8), _ltx(0, 9, 9)]) == [_ltx(9, 1, 8), _ltx(0, 9, 9)]
    assert restore_plan([]) == []
    with pytest.raises(DamagedLtx, match="non-contiguous"):
        restore_plan([snap, _ltx(0, 11, 11), _ltx(0, 13, 13)])
    with pytest.raises(DamagedLtx, match="no snapshot"):
        restore_plan([_ltx(0, 5, 5), _ltx(0, 6, 6)])


def _write(data: Path, sql: str, *bindings: object) -> None:
    conn = open_connection(data / "a.db", ShardConfig())
    try:
        conn.execute(sql, bindings)
    finally:
        conn.close()


def test_native_restore_matches_litestreams_own_byte_for_byte(tmp_path: Path, replica: str) -> None:
    """At each stage (snapshot + L0, many L0, after a level-1 compaction, a multi-page growth, a shrink by
    VACUUM) the file read from the LTX objects equals the one `litestream restore` writes."""
    env = dict(os.environ)
    target = parse_replica(replica, env)
    store = store_for(target, env)
    data = tmp_path / "d"
    open_shard(data, "a", ShardConfig()).close()
    litestream = Litestream(data, target, LitestreamConfig(idle_check_interval="1s"), env)
    litestream.start()
    plans: list[list[LtxFile]] = []

    def compare(stage: str) -> None:
        litestream.sync("a")
        native, binary = tmp_path / f"native-{stage}.db", tmp_path / f"binary-{stage}.db"
        assert _fetch_native("a", target, store, None, native)
        assert restore(find_binary(LitestreamConfig(), env), target.litestream_url("a"), binary, env)
        assert native.read_bytes() == binary.read_bytes(), stage
        root = target.agent_key("a") + "/"
        plans.append(restore_plan(f for f in (parse_key(k, root) for k in store.list(root)) if f))

    try:
        litestream.register("a")
        _write(data, "CREATE TABLE t(x)")
        compare("first")
        for i in range(30):
            _write(data, "INSERT INTO t VALUES (?)", f"row {i}" * 40)
        compare("many")
        deadline = time.monotonic() + 30
        root = target.agent_key("a") + "/"
        while not any(f.level == 1 for f in (parse_key(k, root) for k in store.list(root)) if f):
            assert time.monotonic() < deadline, "no level-1 compaction within 30 s"
            time.sleep(0.2)
        _write(data, "INSERT INTO t VALUES ('after the compaction')")
        compare("compacted")
        _write(data, "INSERT INTO t VALUES (?)", os.urandom(300_000))
        compare("grown")
        _write(data, "DELETE FROM t WHERE length(x) > 100000")
        _write(data, "VACUUM")
        compare("shrunk")
    finally:
        litestream.stop()
    assert any(f.level == 1 for f in plans[2]), "the compacted stage did not restore through a level-1 file"
    sizes = [(tmp_path / f"native-{s}.db").stat().st_size for s in ("first", "grown", "shrunk")]
    assert sizes[1] > sizes[0] + 300_000 and sizes[2] < sizes[1] - 300_000


def _replicated(tmp_path: Path) -> Path:
    replica = tmp_path / "replica"
    data = tmp_path / "d"
    open_shard(data, "a", ShardConfig()).close()
    litestream = Litestream(data, parse_replica(str(replica)), LitestreamConfig(), dict(os.environ))
    litestream.start()
    try:
        litestream.register("a")
        for i in range(5):
            _write(data, "INSERT INTO shard_meta(key, value) VALUES (?, ?)", f"k{i}", "v" * 500)
            litestream.sync("a")
    finally:
        litestream.stop()
    return replica


def _level0(replica: Path) -> list[Path]:
    return sorted((replica / "agents" / "a" / "ltx" / "0").glob("*.ltx"))


def test_a_flipped_payload_byte_fails_the_checksum_and_writes_nothing(tmp_path: Path) -> None:
    replica = _replicated(tmp_path)
    victim = _level0(replica)[-1]
    raw = bytearray(victim.read_bytes())
    raw[115] ^= 0x01  # inside the first page's LZ4 block
    victim.write_bytes(bytes(raw))
    with pytest.raises(ReplicaNotRestorable, match=r"replica is damaged: .*(checksum mismatch|does not decompress)"):
        restore_agent("a", tmp_path / "n2", str(replica))
    assert not (tmp_path / "n2" / "a.db").exists()


def test_a_missing_file_between_two_is_a_gap_not_an_older_restore(tmp_path: Path) -> None:
    replica = _replicated(tmp_path)
    files = _level0(replica)
    assert len(files) >= 4
    files[-2].unlink()
    with pytest.raises(ReplicaNotRestorable, match=r"non-contiguous.*binary could not restore it either"):
        restore_agent("a", tmp_path / "n2", str(replica))
    assert not (tmp_path / "n2" / "a.db").exists()


@dataclass(frozen=True)
class RecordingBinary:
    """A ``litestream`` that writes each invocation's arguments to a log, then execs the real binary."""

    config: LitestreamConfig
    log: Path

    def calls(self) -> list[list[str]]:
        """The binary's invocations, less its `version` query (asked once per process to warn about a newer
        Litestream than the reader was verified against)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [call for call in (line.split("\t") for line in lines) if call[0] != "version"]


@pytest.fixture
def recording_binary(tmp_path: Path) -> RecordingBinary:
    real = find_binary(LitestreamConfig(), dict(os.environ))
    log = tmp_path / "litestream-calls.log"
    wrapper = tmp_path / "bin" / "litestream"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\n(IFS=\"$(printf '\\t')\"; printf '%s\\n' \"$*\") >> {shlex.quote(str(log))}\n"
                       f"exec {shlex.quote(str(real))} \"$@\"\n")
    wrapper.chmod(0o755)
    return RecordingBinary(LitestreamConfig(binary=wrapper), log)


def test_an_unknown_format_goes_to_the_litestream_binary(tmp_path: Path, recording_binary: RecordingBinary) -> None:
    """A header flag this version does not know is never guessed at: the binary gets the replica (and here
    refuses it too, so the restore fails with nothing written)."""
    replica = _replicated(tmp_path)
    victim = _level0(replica)[-1]
    raw = bytearray(victim.read_bytes())
    struct.pack_into(">I", raw, 4, 0x6)  # an extra header flag
    victim.write_bytes(bytes(raw))
    with pytest.raises(ReplicaNotRestorable):
        restore_agent("a", tmp_path / "n2", str(replica), litestream=recording_binary.config)
    url = parse_replica(str(replica)).litestream_url("a")
    assert [(c[0], c[-1]) for c in recording_binary.calls()] == [("restore", url)]  # once, for this agent
    assert not (tmp_path / "n2" / "a.db").exists()


def test_native_and_binary_restores_agree_through_the_public_entry_point(
        tmp_path: Path, recording_binary: RecordingBinary) -> None:
    replica = _replicated(tmp_path)
    native = restore_agent("a", tmp_path / "n2", str(replica), litestream=recording_binary.config)
    assert recording_binary.calls() == []  # a format the reader knows never starts the binary
    binary = restore_agent("a", tmp_path / "n3", str(replica),
                           litestream=replace(recording_binary.config, native_restore=False))
    assert [c[0] for c in recording_binary.calls()] == ["restore"]
    assert native.read_bytes() == binary.read_bytes()


def test_no_flipped_byte_or_truncation_changes_a_page_silently(tmp_path: Path) -> None:
    """The CRC covers every byte but its own, with each payload counted as its decompressed page, and the
    layout around it is checked: a flipped byte is refused, or (LZ4 matches inside runs of equal bytes can
    point elsewhere in the run) it decodes to the very same pages. Seeded sample of 1,500 flips."""
    replica = _replicated(tmp_path)
    first = _level0(replica)[0]  # TXID 1: every page of the file
    file = parse_key(str(first), str(replica / "agents" / "a") + "/")
    assert file is not None
    data = first.read_bytes()
    pages = decode(data, file).pages
    assert pages
    rng = random.Random(7)
    refused = 0
    for _ in range(1500):
        spoiled = bytearray(data)
        spoiled[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        try:
            assert decode(bytes(spoiled), file).pages == pages
        except LtxError:
            refused += 1
    assert refused > 1200  # most flips land where they must be refused
    for cut in [0, 3, 99, 100, 150, len(data) - 17, len(data) - 1, *rng.sample(range(len(data)), 40)]:
        with pytest.raises(LtxError):
            decode(data[:cut], file)


def test_a_store_failure_mid_restore_is_a_replication_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The object store's own exceptions (botocore, OSError) do not leak out of a restore: callers catch
    one error root, with the agent's id, and nothing is written."""
    from agentshards._replication.objectstore import LocalStore

    replica = _replicated(tmp_path)

    def unreadable(self: LocalStore, key: str) -> bytes:
        raise OSError(f"I/O error reading {key}")

    monkeypatch.setattr(LocalStore, "get", unreadable)
    with pytest.raises(ReplicationError, match="could not read the replica of agent a: I/O error") as caught:
        restore_agent("a", tmp_path / "n2", str(replica))
    assert caught.value.agent_id == "a"
    assert not (tmp_path / "n2" / "a.db").exists()
