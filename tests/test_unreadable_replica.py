"""A replica the in-process reader does not fully understand is never read as "no replica" nor restored
older: it goes to `litestream restore` (the real binary, counted through a wrapper script), and when that
cannot do better the agent is not restorable, its replica untouched. File replicas and S3 (moto) both."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from agentshards import LitestreamConfig, ReplicationError, ShardConfig, recover, restore_agent, restore_agents
from agentshards._base.errors import NoReplica, ReplicaNotRestorable
from agentshards._core.shard import open_shard
from agentshards._core.sqlite import open_connection
from agentshards._replication import litestream as litestream_module
from agentshards._replication.litestream import Litestream, find_binary, restore
from agentshards._replication.ltx import VERIFIED_LITESTREAM, parse_key
from agentshards._replication.manifest import ManifestEntry, write_manifest
from agentshards._replication.objectstore import ObjectStore, store_for
from agentshards._replication.replica import ReplicaTarget, parse_replica

from agent_process import TESTS_DIR

ROWS = 5  # one Litestream transaction (one LTX file at level 0) per row


def _replicate(tmp_path: Path, replica: str) -> tuple[ReplicaTarget, ObjectStore]:
    """Agent "a" replicated by the real Litestream, one synced transaction per row."""
    env = dict(os.environ)
    target = parse_replica(replica, env)
    data = tmp_path / "d"
    open_shard(data, "a", ShardConfig()).close()
    litestream = Litestream(data, target, LitestreamConfig(), env)
    litestream.start()
    try:
        litestream.register("a")
        for i in range(ROWS):
            conn = open_connection(data / "a.db", ShardConfig())
            try:
                conn.execute("INSERT INTO shard_meta(key, value) VALUES (?, ?)", (f"k{i}", "v" * 500))
            finally:
                conn.close()
            litestream.sync("a")
    finally:
        litestream.stop()
    return target, store_for(target, env)


def _objects(store: ObjectStore, target: ReplicaTarget, agent_id: str) -> dict[str, bytes]:
    return {key: store.get(key) for key in store.list(target.agent_key(agent_id) + "/")}


def _counting_binary(tmp_path: Path) -> tuple[LitestreamConfig, Path]:
    """The real litestream behind a script that records each subcommand it is run with."""
    calls = tmp_path / "litestream-calls"
    script = tmp_path / "bin" / "litestream"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {find_binary(LitestreamConfig(), os.environ)} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return LitestreamConfig(binary=script), calls


def _restores(calls: Path) -> int:
    return calls.read_text().split().count("restore") if calls.exists() else 0


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM shard_meta WHERE key LIKE 'k%'").fetchone()[0])
    finally:
        conn.close()


def test_an_unknown_object_beside_the_ltx_files_sends_the_restore_to_the_binary(tmp_path: Path,
                                                                               replica: str) -> None:
    """0.5.17's own restore skips the object too (it reaches the same TXID as the files read here): the
    object could hold the newest state, so the agent is not restorable rather than restored from the rest."""
    target, store = _replicate(tmp_path, replica)
    store.put(target.agent_key("a") + "/notes.txt", b"not a Litestream file")
    before = _objects(store, target, "a")
    config, calls = _counting_binary(tmp_path)
    with pytest.raises(ReplicaNotRestorable, match=r"notes\.txt.*the litestream binary does not read them") as caught:
        restore_agent("a", tmp_path / "n2", replica, litestream=config)
    assert caught.value.agent_id == "a"
    assert _restores(calls) == 1
    assert not (tmp_path / "n2" / "a.db").exists()
    assert _objects(store, target, "a") == before


def test_the_newest_files_in_an_unknown_layout_are_not_an_older_restore(tmp_path: Path, replica: str) -> None:
    """The newest transaction's file under a key the reader does not parse: the TXIDs it can read end one
    short, and so does the binary's restore; neither is taken for the agent's state."""
    target, store = _replicate(tmp_path, replica)
    root = target.agent_key("a") + "/"
    newest = max((f for f in (parse_key(k, root) for k in store.list(root)) if f), key=lambda f: f.max_txid)
    assert newest.max_txid == ROWS
    store.put(newest.key + ".next", store.get(newest.key))  # as a later release might name it
    store.delete(newest.key)
    with pytest.raises(ReplicaNotRestorable, match=r"\.ltx\.next.*restored TXID 4"):
        restore_agent("a", tmp_path / "n2", replica)
    assert not (tmp_path / "n2" / "a.db").exists()


def test_a_binary_that_reads_a_layout_the_reader_does_not_restores_the_newest_state(tmp_path: Path) -> None:
    """Stands in for a later Litestream: a binary that reads the renamed newest file (it restores from a
    copy with the old name back) gets past the TXIDs read here, so its restore is taken: all rows."""
    replica = str(tmp_path / "replica")
    target, store = _replicate(tmp_path, replica)
    root = target.agent_key("a") + "/"
    newest = max((f for f in (parse_key(k, root) for k in store.list(root)) if f), key=lambda f: f.max_txid)
    store.put(newest.key + ".next", store.get(newest.key))
    store.delete(newest.key)
    real = find_binary(LitestreamConfig(), os.environ)
    script = tmp_path / "bin" / "litestream"
    script.parent.mkdir()
    script.write_text(  # restore from a copy in which *.ltx.next is read as *.ltx; anything else: the real one
        "#!/bin/sh\n"
        'if [ "$1" = restore ]; then\n'
        f"  copy={tmp_path}/newer-copy; rm -rf $copy; cp -r {replica} $copy\n"
        '  for f in $(find $copy -name "*.ltx.next"); do mv "$f" "${f%.next}"; done\n'
        f'  url=$(echo "$5" | sed "s#{replica}#$copy#")\n'
        f'  exec {real} "$1" "$2" "$3" "$4" "$url"\n'
        "fi\n"
        f'exec {real} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    path = restore_agent("a", tmp_path / "n2", replica, litestream=LitestreamConfig(binary=script))
    assert _rows(path) == ROWS


def test_a_damaged_file_is_retried_with_the_binary_before_giving_up(tmp_path: Path, replica: str) -> None:
    target, store = _replicate(tmp_path, replica)
    root = target.agent_key("a") + "/"
    newest = max((f for f in (parse_key(k, root) for k in store.list(root)) if f), key=lambda f: f.max_txid)
    raw = bytearray(store.get(newest.key))
    raw[115] ^= 0x01  # inside the first page's LZ4 block
    store.put(newest.key, bytes(raw))
    config, calls = _counting_binary(tmp_path)
    with pytest.raises(ReplicaNotRestorable, match=r"replica is damaged.*could not restore it either.*checksum"):
        restore_agent("a", tmp_path / "n2", replica, litestream=config)
    assert _restores(calls) == 1
    assert not (tmp_path / "n2" / "a.db").exists()


def test_only_unknown_objects_are_not_restorable_by_either_reader(tmp_path: Path, replica: str) -> None:
    """Nothing the reader parses, and the binary finds "no matching backup files": still not "no replica"
    (that needs an empty prefix), with the in-process reader and with the binary alone."""
    target = parse_replica(replica, os.environ)
    store = store_for(target, os.environ)
    store.put(target.agent_key("a") + "/generations/0a1b/snapshots/00000001.snapshot.lz4", b"a 0.3 snapshot")
    for config in (LitestreamConfig(), LitestreamConfig(native_restore=False)):
        with pytest.raises(ReplicaNotRestorable, match="finds no backup in them either"):
            restore_agent("a", tmp_path / "n2", replica, litestream=config)
        with pytest.raises(NoReplica, match="nothing is stored under"):
            restore_agent("empty", tmp_path / "n2", replica, litestream=config)
    assert not list((tmp_path / "n2").glob("*.db"))


def test_recover_does_not_start_over_an_agent_whose_replica_it_cannot_read(tmp_path: Path, replica: str) -> None:
    """The manifest says "running" and has the inputs, the prefix holds only objects no reader here reads:
    recovery reports the agent as not restorable (its outcome; recovery itself goes on) instead of paying for
    its run again and registering a fresh file over its replica."""
    target = parse_replica(replica, os.environ)
    store = store_for(target, os.environ)
    write_manifest(store, target, ManifestEntry(
        agent_id="kept", status="running", target="sample_agents:two_steps", input_digest="-", run_id="r",
        code_fingerprint=None, steps=1, updated_at=time.time(), inputs_json='{"x":3}'))
    store.put(target.agent_key("kept") + "/000a/0000000000000001-0000000000000009.ltx", b"LTX2 from later")
    before = _objects(store, target, "kept")
    outcome = recover(tmp_path / "node2", replica, app_dir=TESTS_DIR, lease_ttl_s=1)["kept"]
    assert isinstance(outcome, ReplicaNotRestorable) and outcome.agent_id == "kept"
    assert not (tmp_path / "node2" / "kept.db").exists()
    assert _objects(store, target, "kept") == before


@pytest.mark.parametrize(("printed", "warned"), [("v0.6.0", True), ("0.5.18-rc1", True), ("v0.5.17", False)])
def test_a_litestream_newer_than_the_verified_one_is_warned_about_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, printed: str,
        warned: bool) -> None:
    """The in-process reader runs no binary, yet the installed one's version is asked once and a newer one
    than the release the reader was verified against is named in one warning per process."""
    assert VERIFIED_LITESTREAM == (0, 5, 17)
    monkeypatch.setattr(litestream_module, "_warned_newer", False)
    replica = str(tmp_path / "replica")
    _replicate(tmp_path, replica)
    fake = tmp_path / "fake" / "litestream"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho {printed}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with caplog.at_level(logging.WARNING, logger="agentshards"):
        for node in ("n2", "n3"):
            assert _rows(restore_agent("a", tmp_path / node, replica, litestream=LitestreamConfig(binary=fake))) == ROWS
    warnings = [r.getMessage() for r in caplog.records if "newer than 0.5.17" in r.getMessage()]
    assert warnings == ([f"litestream {printed} is newer than 0.5.17, the release the in-process restore (LTX "
                         "reader) was verified against; it refuses what it does not read and the binary restores "
                         "that, but LitestreamConfig(native_restore=False) restores with the binary alone"]
                        if warned else [])


def test_a_fleet_restore_listed_once_tells_an_unreadable_replica_from_an_empty_one(tmp_path: Path) -> None:
    """From eight agents the fleet prefix is listed once and each agent gets its share of the keys: an agent
    with only unknown objects is not restorable, one with nothing stored has no replica."""
    replica = str(tmp_path / "replica")
    target = parse_replica(replica)
    store = store_for(target, {})
    store.put(target.agent_key("odd") + "/0009/snapshot.ltx.zst", b"from a later layout")
    ids = ["odd", *(f"e{i}" for i in range(7))]
    results = restore_agents(ids, tmp_path / "n2", replica)
    assert isinstance(results.pop("odd"), ReplicaNotRestorable)
    assert all(isinstance(outcome, NoReplica) for outcome in results.values()), results
    assert not list((tmp_path / "n2").glob("*.db"))


def test_a_litestream_restore_that_hangs_is_a_replication_error(tmp_path: Path) -> None:
    hanging = tmp_path / "litestream"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(hanging.stat().st_mode | stat.S_IXUSR)
    started = time.monotonic()
    with pytest.raises(ReplicationError, match="did not complete"):
        restore(hanging, (tmp_path / "replica").as_uri(), tmp_path / "out.db", {}, timeout_s=0.5)
    assert time.monotonic() - started < 10
