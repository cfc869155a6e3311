"""Fault injection against real fleets: worker kills, crash points, node loss, Litestream kills, S3 outages,
hostile input and dual owners. Prints one row per scenario and exits non-zero if any invariant broke.

    python scripts/chaos.py                 # short form (what CI runs, a few minutes)
    python scripts/chaos.py --duration 600  # long form: repeat the scenarios for about this many seconds

Every scenario drives real processes: the fake LLM server (serial numbers tell a replayed answer from a
paid one), moto S3 behind a loopback fault proxy, real Litestream, real SIGKILLs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import apsw  # noqa: E402
import boto3  # noqa: E402
from bench_replication import start_moto  # noqa: E402

import agentshards  # noqa: E402
from agentshards._fakellm import FakeLLMServer, serial_of  # noqa: E402

from agent_process import completed_steps, spawn_chat_agent, wait_ready  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

TESTS = ROOT / "tests"
CLI = [sys.executable, "-m", "agentshards"]
CANARY = "chaos-canary-secret-7f3a9c"


@dataclass
class Row:
    scenario: str
    runs: int = 0
    faults: int = 0
    steps_lost: int = 0
    completed_repeated: int = 0
    corrupt_restores: int = 0
    errors_surfaced: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.steps_lost == 0 and self.completed_repeated == 0 and self.corrupt_restores == 0


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def _repeats(log: list[object], results: dict[str, list[dict[str, object]]]) -> int:
    """Completed calls requested again after the request whose answer was recorded."""
    repeated = 0
    for agent_id, result in results.items():
        for entry in result:
            serial = serial_of(str(entry["id"]))
            key = (agent_id, f"call {entry['i']} of {len(result)}")
            repeated += sum(1 for r in log if r.serial > serial  # type: ignore[attr-defined]
                            and (r.body.get("user"), r.body["messages"][0]["content"]) == key)  # type: ignore[attr-defined]
    return repeated


def worker_kills(rng: random.Random, kills: int, work: Path, s3_env: dict[str, str]) -> Row:
    row = Row("SIGKILL random workers")
    with FakeLLMServer(delay_s=0.02) as llm:
        env = dict(os.environ, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        fleet = agentshards.Fleet(work / "kills", env=env, app_dir=TESTS, config=agentshards.SupervisorConfig(
            agents_per_worker=2, concurrency=8, max_restarts=kills + 5, restart_backoff_s=0.02,
            restart_backoff_max_s=0.2))
        calls = max(10, kills)
        fleet.launch("sample_agents:chat_calls", {f"w{i}": {"n": calls} for i in range(8)})
        import threading

        results: dict[str, object] = {}
        runner = threading.Thread(target=lambda: results.update(fleet.wait(timeout_s=900)))
        runner.start()
        while runner.is_alive() and row.faults < kills:
            time.sleep(rng.uniform(0.05, 0.4))
            pids = fleet.worker_pids()
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                row.faults += 1
        runner.join()
        finished = {k: v for k, v in results.items() if isinstance(v, list)}
        row.runs = len(results)
        row.errors_surfaced = len(results) - len(finished)
        row.steps_lost = sum(calls - len(v) for v in finished.values())
        row.completed_repeated = _repeats(llm.requests, finished)  # type: ignore[arg-type]
        row.notes.append(f"{len(llm.requests) - 8 * calls} in-flight requests repeated")
    return row


def crash_points(rng: random.Random, per_point: int, work: Path, s3_env: dict[str, str]) -> Row:
    row = Row("SIGKILL at seeded crash points")
    with FakeLLMServer() as llm:
        for point in ("after_intent", "after_response", "after_commit"):
            data, agent_id = work / f"cp-{point}", f"cp-{point.replace('_', '-')}"
            for _ in range(per_point):
                proc = spawn_chat_agent(data, llm.base_url, agent_id, 10,
                                        {"AGENTSHARDS_TEST_CRASH": f"{point}@{rng.randint(1, 2)}"})
                wait_ready(proc)
                proc.wait(timeout=60)
                row.faults += proc.returncode == -signal.SIGKILL
            proc = spawn_chat_agent(data, llm.base_url, agent_id, 10)
            wait_ready(proc)
            out, _ = proc.communicate(timeout=60)
            row.runs += 1
            result = json.loads(out)
            log = [r for r in llm.requests if r.body.get("user") == agent_id]
            row.completed_repeated += _repeats(log, {agent_id: result})
            row.steps_lost += 10 - completed_steps(data, agent_id)
    return row


def node_loss(rng: random.Random, rounds: int, work: Path, s3_env: dict[str, str]) -> Row:
    row = Row("node loss: kill everything, wipe, recover")
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1")
    for r in range(rounds):
        bucket = f"chaos-node-{r}-{rng.randrange(10**6)}"
        s3.create_bucket(Bucket=bucket)
        replica = f"s3://{bucket}/fleet"
        inputs = work / f"nl-{r}.jsonl"
        inputs.write_text("".join(json.dumps({"agent_id": f"n{i}", "inputs": {"n": 10}}) + "\n" for i in range(4)))
        node1, node2 = work / f"nl-{r}-a", work / f"nl-{r}-b"
        with FakeLLMServer(delay_s=0.05) as llm:
            env = dict(s3_env, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
            sup = subprocess.Popen([*CLI, "run", "sample_agents:chat_calls", "--inputs", str(inputs), "--data-dir",
                                    str(node1), "--replica", replica, "--app-dir", str(TESTS), "--lease-ttl", "2"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = rng.randint(8, 30)
            deadline = time.monotonic() + 60
            while llm.request_count < target and time.monotonic() < deadline and sup.poll() is None:
                time.sleep(0.01)
            sup.send_signal(signal.SIGKILL)
            sup.wait()
            row.faults += 1
            time.sleep(0.5)  # workers and Litestream die with the supervisor (parent-death signal)
            local = sum(completed_steps(node1, f"n{i}") for i in range(4))
            shutil.rmtree(node1)
            time.sleep(2.1)  # the dead node's lease expires
            before = llm.request_count
            out = subprocess.run([*CLI, "recover", "--replica", replica, "--data-dir", str(node2), "--take-over",
                                  "--app-dir", str(TESTS)], env=env, capture_output=True, text=True, timeout=300)
            row.runs += 1
            if out.returncode != 0:
                row.errors_surfaced += 1
                row.notes.append(out.stderr.strip()[-200:])
                continue
            after = llm.request_count - before
            finished = sum(completed_steps(node2, f"n{i}") for i in range(4))
            row.steps_lost += 40 - finished
            row.notes.append(f"round {r}: {local} local steps at the kill, {after - (40 - local)} repeated after "
                             f"recovery (local-only or in flight)")
    return row


def litestream_kills(rng: random.Random, rounds: int, work: Path, s3_env: dict[str, str]) -> Row:
    from agentshards._journal import Journal
    from agentshards._run import start_replication
    from agentshards._shard import open_shard

    row = Row("SIGKILL Litestream while writing")
    for r in range(rounds):
        data, replica = work / f"lk-{r}", str(work / f"lk-{r}-replica")
        replication = start_replication(data, replica, agentshards.RunConfig(), os.environ)
        try:
            journal = Journal(open_shard(data, "k", agentshards.RunConfig().shard), "k")
            replication.litestream.register("k")
            run = journal.begin_run("m:f", "{}", "d")
            kill_at = rng.randint(50, 900)
            for i in range(1200):
                if i == kill_at:
                    os.kill(replication.litestream.pid or 0, signal.SIGKILL)
                    row.faults += 1
                journal.record_step(run.id, f"s{i}", "step", '"' + "x" * 3000 + '"')
            replication.litestream.ensure_running()
            replication.confirm("k", 60)
            journal.close()
        finally:
            replication.litestream.stop()
        agentshards.restore_agent("k", work / f"lk-{r}-back", replica)
        conn = apsw.Connection(str(work / f"lk-{r}-back" / "k.db"))
        row.runs += 1
        row.steps_lost += 1200 - conn.execute("SELECT count(*) FROM steps").fetchall()[0][0]
        row.corrupt_restores += conn.execute("PRAGMA integrity_check").fetchall() != [("ok",)]
        conn.close()
    return row


def s3_outage(rng: random.Random, seconds: float, work: Path, s3_env: dict[str, str], port: int) -> Row:
    from agentshards._journal import Journal
    from agentshards._run import start_replication
    from agentshards._shard import open_shard

    row = Row(f"S3 refuses connections for {seconds:.0f} s")
    proxy = FaultProxy(port)
    bucket = f"chaos-outage-{rng.randrange(10**6)}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1").create_bucket(Bucket=bucket)
    env = dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    replica = f"s3://{bucket}/x"
    replication = start_replication(work / "out", replica, agentshards.RunConfig(), env)
    try:
        journal = Journal(open_shard(work / "out", "o", agentshards.RunConfig().shard), "o")
        replication.litestream.register("o")
        run = journal.begin_run("m:f", "{}", "d")
        journal.record_step(run.id, "before", "step", "1")
        replication.confirm("o", 30)
        proxy.outage()
        row.faults += 1
        start = time.monotonic()
        written = 0
        while time.monotonic() - start < seconds:
            journal.record_step(run.id, f"during-{written}", "step", "1")  # agents keep going: local durability
            written += 1
            time.sleep(0.05)
        try:
            replication.confirm("o", 2)
        except agentshards.ReplicationError:
            row.errors_surfaced += 1  # a replicated step during the outage fails clearly, it does not hang
        proxy.resume()
        back = time.monotonic()
        replication.confirm("o", 120)
        row.notes.append(f"replica caught up {time.monotonic() - back:.1f} s after S3 returned")
        journal.close()
    finally:
        proxy.resume()
        replication.litestream.stop()
        proxy.close()
    agentshards.restore_agent("o", work / "out-back", replica, env=env)
    conn = apsw.Connection(str(work / "out-back" / "o.db"))
    row.runs = 1
    row.steps_lost = written + 1 - conn.execute("SELECT count(*) FROM steps").fetchall()[0][0]
    row.corrupt_restores = conn.execute("PRAGMA integrity_check").fetchall() != [("ok",)]
    conn.close()
    return row


def hostile_input(rng: random.Random, work: Path, s3_env: dict[str, str]) -> Row:
    import sample_agents

    row = Row("hostile ids, names, files, canary secret")
    for bad in ["../x", "/etc/passwd", "a\x00b", "ａgent", "a/../b", "..", "x" * 200, "-rf", ".hidden"]:
        row.runs += 1
        try:
            agentshards.run_agent(sample_agents.two_steps, agent_id=bad, data_dir=work / "hostile", x=1)
            row.notes.append(f"accepted id {bad!r}")
            row.steps_lost += 1  # counted as a broken invariant
        except agentshards.InvalidAgentId:
            row.errors_surfaced += 1
    name = "x'); DROP TABLE steps; --"
    assert agentshards.run_agent(sample_agents.named_step, agent_id="sql", data_dir=work / "hostile", name=name) == name
    # a crafted SQLite file placed in the replica under an agent's prefix: restore must refuse it
    replica = work / "hostile-replica"
    agentshards.run_agent(sample_agents.local_steps, agent_id="real", data_dir=work / "h2", replica=str(replica), n=3)
    shutil.copytree(replica / "agents" / "real", replica / "agents" / "victim")
    row.runs += 1
    try:
        agentshards.restore_agent("victim", work / "h3", str(replica))
        row.corrupt_restores += 1
    except agentshards.ShardError:
        row.errors_surfaced += 1
    # the canary secret: in no log, written config, worker environment or shard
    with FakeLLMServer() as llm:
        env = dict(s3_env, AWS_SECRET_ACCESS_KEY=CANARY, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        bucket = f"chaos-canary-{rng.randrange(10**6)}"
        boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1").create_bucket(
            Bucket=bucket)
        fleet = agentshards.Fleet(work / "canary", replica=f"s3://{bucket}/c", env=env, app_dir=TESTS)
        fleet.launch("sample_agents:env_probe", {"probe": {}})
        probe = fleet.wait(timeout_s=120)["probe"]
    row.runs += 1
    leaked = [str(p) for p in (work / "canary").rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    if leaked or probe.get("AWS_SECRET_ACCESS_KEY"):
        row.steps_lost += 1
        row.notes.append(f"canary leaked: {leaked} worker env={probe}")
    return row


def dual_owners(rng: random.Random, work: Path, s3_env: dict[str, str]) -> Row:
    row = Row("two supervisors, two nodes")
    first = agentshards.Fleet(work / "dual", app_dir=TESTS)
    first.launch("sample_agents:two_steps", {"a": {"x": 1}})
    row.runs += 1
    try:
        agentshards.Fleet(work / "dual", app_dir=TESTS).launch("sample_agents:two_steps", {"b": {"x": 1}})
        row.steps_lost += 1
    except agentshards.DataDirLocked:
        row.errors_surfaced += 1
    first.close()
    bucket = f"chaos-dual-{rng.randrange(10**6)}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1").create_bucket(Bucket=bucket)
    node_a = agentshards.Fleet(work / "dual-a", replica=f"s3://{bucket}/p", env=s3_env, app_dir=TESTS)
    node_a.launch("sample_agents:two_steps", {"a": {"x": 1}})
    row.runs += 1
    try:
        agentshards.Fleet(work / "dual-b", replica=f"s3://{bucket}/p", env=s3_env, app_dir=TESTS).launch(
            "sample_agents:two_steps", {"b": {"x": 1}})
        row.steps_lost += 1
    except agentshards.LeaseError:
        row.errors_surfaced += 1
    node_a.close()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=0.0, help="long form: repeat for about this long")
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    long_form = args.duration > 0
    moto, port = start_moto()
    s3_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    s3_env.update(AWS_ACCESS_KEY_ID="chaos", AWS_SECRET_ACCESS_KEY="chaos", AWS_REGION="us-east-1",
                  AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}")
    os.environ.update({k: v for k, v in s3_env.items() if k.startswith("AWS_")})
    scenarios: list[tuple[str, Callable[[Path], Row]]] = [
        ("kills", lambda w: worker_kills(rng, 200 if long_form else 50, w, s3_env)),
        ("points", lambda w: crash_points(rng, 20 if long_form else 5, w, s3_env)),
        ("node", lambda w: node_loss(rng, 5 if long_form else 2, w, s3_env)),
        ("litestream", lambda w: litestream_kills(rng, 5 if long_form else 2, w, s3_env)),
        ("outage", lambda w: s3_outage(rng, 120 if long_form else 10, w, s3_env, port)),
        ("hostile", lambda w: hostile_input(rng, w, s3_env)),
        ("dual", lambda w: dual_owners(rng, w, s3_env)),
    ]
    rows: dict[str, Row] = {}
    started = time.monotonic()
    try:
        while True:
            for name, run in scenarios:
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.monotonic()
                    row = run(Path(tmp))
                    row.seconds = time.monotonic() - t0
                total = rows.setdefault(name, Row(row.scenario))
                for attr in ("runs", "faults", "steps_lost", "completed_repeated", "corrupt_restores",
                             "errors_surfaced", "seconds"):
                    setattr(total, attr, getattr(total, attr) + getattr(row, attr))
                total.notes += row.notes
            if not long_form or time.monotonic() - started > args.duration:
                break
    finally:
        moto.terminate()
        moto.wait()
    print(f"{'scenario':<42} {'runs':>5} {'faults':>6} {'steps lost':>10} {'LLM calls repeated':>18} "
          f"{'corrupt restores':>16} {'errors surfaced':>15} {'seconds':>8}")
    for row in rows.values():
        print(f"{row.scenario:<42} {row.runs:>5} {row.faults:>6} {row.steps_lost:>10} {row.completed_repeated:>18} "
              f"{row.corrupt_restores:>16} {row.errors_surfaced:>15} {row.seconds:>8.1f}")
        for note in row.notes[:6]:
            print(f"    {note}")
    broken = [r.scenario for r in rows.values() if not r.ok]
    print("all invariants held" if not broken else f"BROKEN: {', '.join(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
