"""Chaos against files: a long reader, a full disk, interrupted restores and archives, hostile input."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from _chaos_common import CANARY, CLI, S3, TESTS, Row, shard_rows

import agentshards
from agentshards.testing._fakellm import FakeLLMServer

import sample_agents


def long_reader(rng: random.Random, seconds: float, work: Path, s3: S3) -> Row:
    """A read transaction held open on a replicated agent's file while the agent writes 3 KB steps: the
    agent never sees SQLITE_BUSY; WAL growth while the reader blocks checkpoints is reported."""
    import apsw

    row = Row(f"reader open through {int(seconds * 100)} writes")
    replica = f"s3://{s3.bucket(f'chaos-reader-{rng.randrange(10**6)}')}/x"
    data = work / "reader"
    agentshards.run_agent(sample_agents.local_steps, agent_id="r", data_dir=data, n=1)
    wal = data / "r.db-wal"
    reader = apsw.Connection(str(data / "r.db"), flags=apsw.SQLITE_OPEN_READONLY)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM steps").fetchall()
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], wal.stat().st_size)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    steps = int(seconds * 100)
    row.faults += 1
    try:
        agentshards.run_agent(sample_agents.local_steps, agent_id="r", data_dir=data, replica=replica,
                              new_run=True, n=steps, size=3000)
    except agentshards.AgentShardsError as exc:  # BUSY or anything else reaching agent code
        row.errors_surfaced += 1
        row.steps_lost += 1
        row.notes.append(f"agent saw: {exc}"[:300])
    finally:
        reader.execute("COMMIT")
        reader.close()
        stop.set()
        watcher.join()
    row.runs += 1
    size_after = wal.stat().st_size if wal.exists() else 0
    row.notes.append(f"{steps} steps of 3 KB under the reader: WAL peaked at {peak[0] / 1e6:.1f} MB "
                     f"({peak[0] / (steps * 3000):.1f}x the data written), {size_after / 1e6:.1f} MB after")
    _, ok = shard_rows(data / "r.db")
    row.corrupt_restores += not ok
    return row


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path | str]:
    """The mounted tmpfs, or why it could not be mounted (not root: the scenario is reported as skipped)."""
    where.mkdir(parents=True)
    try:
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                               capture_output=True, text=True)
    except OSError as exc:  # no mount(8) at all
        yield f"mounting a tmpfs needs root and mount(8): {exc}"
        return
    if mount.returncode != 0:
        yield f"mounting a tmpfs needs root: {(mount.stderr or mount.stdout).strip()[:200]}"
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def disk_full(rng: random.Random, work: Path, s3: S3) -> Row:
    """An agent on a 600 KB tmpfs: the step that does not fit is not marked complete, the error says so,
    earlier steps survive, and after the disk grows the agent resumes and finishes."""
    row = Row("disk full (tmpfs)")
    with _tmpfs(work / "small", f"{rng.randint(500, 900)}k") as mnt:
        if isinstance(mnt, str):
            return row.skip(mnt)
        data = mnt / "data"
        sample_agents.BIG_STEPS.clear()
        row.runs += 1
        row.faults += 1
        try:
            agentshards.run_agent(sample_agents.big_steps, agent_id="full", data_dir=data, n=60)
            row.skip("the disk never filled: no step met a full disk")
        except agentshards.ShardError as exc:
            clear = "free disk space" in str(exc) and "step 'blob#" in str(exc)
            row.errors_surfaced += clear
            if not clear:
                row.notes.append(f"unclear error: {exc}"[:300])
        recorded = len(sample_agents.BIG_STEPS) - 1
        rows, ok = shard_rows(data / "full.db")
        row.steps_lost += max(0, recorded - len(rows)) + (len(rows) > recorded)  # none lost, none invented
        row.corrupt_restores += not ok
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        sample_agents.BIG_STEPS.clear()
        result = agentshards.run_agent(sample_agents.big_steps, agent_id="full", data_dir=data, n=60)
        row.steps_lost += (result != 60) + (len(sample_agents.BIG_STEPS) != 60 - recorded)
        row.notes.append(f"{recorded} steps fit before the disk filled; the resumed run re-ran "
                         f"{len(sample_agents.BIG_STEPS)} of 60")
    return row


def interrupted_restore(rng: random.Random, kills: int, work: Path, s3: S3) -> Row:
    """`agentshards restore` SIGKILLed (with its litestream child) at random moments: the final path holds
    nothing or a complete, checked file; the next restore succeeds and cleans up."""
    row = Row("SIGKILL during restore")
    replica = f"s3://{s3.bucket(f'chaos-restore-{rng.randrange(10**6)}')}/x"
    _replicated_agent(work / "src", replica, "big", s3, n=2000)
    want, _ = shard_rows(work / "src" / "big.db")
    target = work / "dst"
    for _ in range(kills):
        proc = subprocess.Popen([*CLI, "restore", "big", "--replica", replica, "--data-dir", str(target)],
                                env=s3.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.2, 1.5))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        row.faults += proc.returncode == -signal.SIGKILL
        row.runs += 1
        final = target / "big.db"
        if final.exists():  # finished before the kill: it must be whole
            rows, ok = shard_rows(final)
            row.corrupt_restores += not ok or rows != want
            final.unlink()
            for suffix in ("-wal", "-shm"):
                Path(f"{final}{suffix}").unlink(missing_ok=True)
    if not row.faults:
        row.skip("every restore finished before its SIGKILL")
    leftovers = len(list(target.glob(".restore-*"))) if target.exists() else 0
    agentshards.restore_agent("big", target, replica, env=s3.env)
    rows, ok = shard_rows(target / "big.db")
    row.corrupt_restores += not ok or rows != want
    row.notes.append(f"{leftovers} temp dirs left by killed restores; "
                     f"{len(list(target.glob('.restore-*')))} after the next restore")
    return row


def _replicated_agent(data: Path, replica: str, agent_id: str, s3: S3, n: int) -> None:
    from _chaos_s3 import OWNED

    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard
    from agentshards._fleet.run import start_replication

    replication = start_replication(data, replica, agentshards.RunConfig(), s3.env)
    try:
        journal = Journal(open_shard(data, agent_id, OWNED), agent_id)
        replication.litestream.register(agent_id)
        run = journal.begin_run("chaos:big", "{}", "d")
        for i in range(n):
            journal.record_step(run.id, f"s{i}", "step", f'"{i}:' + "y" * 3000 + '"')
        journal.finish_run(run.id, "succeeded", output_json="null")
        replication.confirm(agent_id, 60)
        journal.close()
    finally:
        replication.litestream.stop()


def interrupted_archive(rng: random.Random, kills: int, work: Path, s3: S3) -> Row:
    """`agentshards archive` SIGKILLed at random moments: the local file is never gone unless a verified
    archive exists; the next archive completes and the fetched file equals the original."""
    row = Row("SIGKILL during archive")
    replica = f"s3://{s3.bucket(f'chaos-archive-{rng.randrange(10**6)}')}/x"
    data = work / "arch"
    for k in range(kills):
        agent_id = f"done{k}"
        agentshards.run_agent(sample_agents.local_steps, agent_id=agent_id, data_dir=data, n=300, size=3000)
        want, _ = shard_rows(data / f"{agent_id}.db")
        proc = subprocess.Popen([*CLI, "archive", agent_id, "--replica", replica, "--data-dir", str(data)],
                                env=s3.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.2, 0.9))  # the CLI's own start takes ~0.3 s of this
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        row.faults += proc.returncode == -signal.SIGKILL
        row.runs += 1
        local = (data / f"{agent_id}.db").exists()
        archived = any(e.agent_id == agent_id for e in agentshards.list_archives(replica, env=s3.env))
        if not local and not archived:
            row.steps_lost += len(want)
            row.notes.append(f"{agent_id}: local file removed with no verified archive")
            continue
        if local:
            agentshards.archive_agent(agent_id, data, replica, env=s3.env)
        fetched = agentshards.fetch_archive(agent_id, work / f"fetched-{k}", replica, env=s3.env)
        rows, ok = shard_rows(fetched)
        row.corrupt_restores += not ok
        row.steps_lost += max(0, len(want) - len(rows)) + (rows[:len(want)] != want)
    if not row.faults:
        row.skip("every archive finished before its SIGKILL")
    return row


def hostile_input(rng: random.Random, work: Path, s3: S3) -> Row:
    """Unsafe ids, SQL in step names, oversized inputs, crafted files in the replica and the archive, and a
    canary secret that must not reach any log, written config, worker environment or shard."""
    row = Row("hostile ids, names, files, canary secret")

    def refused(call: object, errors: tuple[type[BaseException], ...], what: str) -> None:
        row.runs += 1
        try:
            call()  # type: ignore[operator]
            row.steps_lost += 1  # an accepted hostile input counts as a broken invariant
            row.notes.append(f"accepted: {what}")
        except errors as exc:
            row.errors_surfaced += 1
            if "hint" not in str(exc):
                row.notes.append(f"no hint for {what}: {exc}"[:200])
        except agentshards.AgentShardsError as exc:
            row.steps_lost += 1
            row.notes.append(f"{what}: refused late or with the wrong error: {exc}"[:300])

    for bad in ["../x", "/etc/passwd", "a\x00b", "\uff41gent", "a/../b", "..", "x" * 200, "-rf", ".hidden", "a b",
                "a\nb", "a\\b", "*"]:
        refused(lambda bad=bad: agentshards.run_agent(sample_agents.two_steps, agent_id=bad,
                                                      data_dir=work / "hostile", x=1),
                (agentshards.InvalidAgentId,), f"agent id {bad!r}")
        refused(lambda bad=bad: agentshards.restore_agent(bad, work / "hostile", str(work / "r")),
                (agentshards.InvalidAgentId,), f"restore of {bad!r}")
    name = "x'); DROP TABLE steps; --"
    row.runs += 1
    if agentshards.run_agent(sample_agents.named_step, agent_id="sql", data_dir=work / "hostile", name=name) != name:
        row.steps_lost += 1
    refused(lambda: agentshards.run_agent(sample_agents.echo_inputs, agent_id="huge", data_dir=work / "hostile",
                                          a="x" * (40 * 1024 * 1024), b=1),
            (agentshards.InvalidInputs,), "a 40 MB input")
    # a real shard copied under another agent's prefix, in the live replica and in the archive
    replica = work / "hostile-replica"
    agentshards.run_agent(sample_agents.local_steps, agent_id="real", data_dir=work / "h2", replica=str(replica), n=3)
    shutil.copytree(replica / "agents" / "real" / "g1", replica / "agents" / "victim")  # real's live generation
    refused(lambda: agentshards.restore_agent("victim", work / "h3", str(replica)), (agentshards.ShardError,),
            "another agent's replica under victim's prefix")
    agentshards.archive_agent("real", work / "h2", str(replica))
    archived = {e.agent_id: e for e in agentshards.list_archives(str(replica))}["real"]
    crafted = replica / archived.archive_key  # type: ignore[operator]
    crafted.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    refused(lambda: agentshards.fetch_archive("real", work / "h4", str(replica)), (agentshards.ShardError,),
            "a crafted file in place of an archive")
    _canary(row, rng, work, s3)
    return row


def _canary(row: Row, rng: random.Random, work: Path, s3: S3) -> None:
    with FakeLLMServer() as llm:
        env = dict(s3.env, AWS_SECRET_ACCESS_KEY=CANARY, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        bucket = s3.bucket(f"chaos-canary-{rng.randrange(10**6)}")
        fleet = agentshards.Fleet(work / "canary", replica=f"s3://{bucket}/c", env=env, app_dir=TESTS)
        fleet.launch("sample_agents:env_probe", {"probe": {}})
        probe = fleet.wait(timeout_s=120)["probe"]
    row.runs += 1
    leaked = [str(p) for p in (work / "canary").rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    if leaked or not isinstance(probe, dict) or probe.get("AWS_SECRET_ACCESS_KEY"):
        row.steps_lost += 1
        row.notes.append(f"canary leaked: files={leaked} worker env={probe}")
    else:
        row.notes.append("canary secret: in no file under the data dir (logs, config, shards) nor any worker env")
