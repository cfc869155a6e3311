"""Stored targets (a manifest's or a shard's ``module:function``) are code the bucket chooses: only modules
under the app dir are imported unless the operator allows more, and a refusal happens before any import."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentshards import InvalidTarget, list_fleet, recover
from agentshards._core.target_policy import TargetPolicy, resolve_stored

MARKER_MODULE = '''
import os
from pathlib import Path

with open(Path(__file__).with_name("imported.log"), "a") as log:  # what a hostile module's import would do
    log.write(f"{{os.getpid()}}\\n")


def agent(agent, x):
    return {{"v": x * 10}}
'''


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A module that records every import of it, in a directory outside the app dir but on sys.path (as a
    module of an installed package would be)."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    (where / "hostile_mod.py").write_text(MARKER_MODULE.format())
    sys.path.insert(0, str(where))
    try:
        yield where
    finally:
        sys.path.remove(str(where))
        sys.modules.pop("hostile_mod", None)


def _imports(where: Path) -> int:
    log = where / "imported.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_stored_targets_outside_the_app_dir_are_refused_before_import(tmp_path: Path, outside: Path) -> None:
    app = tmp_path / "app"
    (app / "mypkg").mkdir(parents=True)
    (app / "mypkg" / "__init__.py").write_text("")
    (app / "mypkg" / "agents.py").write_text("def agent(agent, x):\n    return x\n")
    # a virtualenv inside the app dir (the default app dir `.` often holds one), reached by a symlink
    site = app / ".venv" / "lib" / "python3.11" / "site-packages"
    (site / "vendored").mkdir(parents=True)
    (app / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (site / "vendored" / "__init__.py").write_text(MARKER_MODULE.format())
    (app / "vendored").symlink_to(site / "vendored")
    policy = TargetPolicy.of(app)

    for target, why in [("os:system", "standard-library"), ("subprocess:run", "standard-library"),
                        ("hostile_mod:agent", "no module file under the app dir"),
                        ("vendored:agent", "installed-packages directory"),
                        ("agentshards._fleet.run:retry_agent", "no module file under the app dir")]:
        with pytest.raises(InvalidTarget, match=why) as refused:
            resolve_stored(target, policy, agent_id="a-1")
        assert refused.value.agent_id == "a-1" and f"--allow-target '{target}'" in str(refused.value.hint)
    with pytest.raises(InvalidTarget, match="not 'module:function'"):
        resolve_stored("mypkg.agents:agent; import os", policy)
    assert _imports(outside) == 0 and "hostile_mod" not in sys.modules
    assert _imports(site / "vendored") == 0 and "vendored" not in sys.modules

    sys.modules.pop("mypkg", None)
    sys.modules.pop("mypkg.agents", None)
    try:
        assert resolve_stored("mypkg.agents:agent", policy)(None, 3) == 3  # the app's own code is imported
    finally:
        sys.modules.pop("mypkg", None)
        sys.modules.pop("mypkg.agents", None)
    allowed = TargetPolicy.of(app, ["hostile_*"])  # an explicit pattern admits the rest
    assert resolve_stored("hostile_mod:agent", allowed)(None, 2) == {"v": 20}
    assert _imports(outside) == 1
    assert TargetPolicy.of(app, ["os:system"]).allowed("os:system")
    assert not TargetPolicy.of(app, ["os:system"]).allowed("os:popen")


def test_a_dotted_target_is_located_without_importing_its_parent_package(tmp_path: Path) -> None:
    """``importlib.util.find_spec('pkg.mod')`` would run ``pkg/__init__.py``: the walk of the app dir does not."""
    app = tmp_path / "app"
    (app / "parentpkg").mkdir(parents=True)
    (app / "parentpkg" / "__init__.py").write_text(MARKER_MODULE.format())
    try:
        with pytest.raises(InvalidTarget, match="no module file"):
            TargetPolicy.of(app).check("parentpkg.missing:agent")
        TargetPolicy.of(app).check("parentpkg:agent")  # admitted, and still nothing imported
        assert _imports(app / "parentpkg") == 0 and "parentpkg" not in sys.modules
    finally:
        sys.modules.pop("parentpkg", None)


def _ghost_manifest(replica: str, agent_id: str, target: str) -> None:
    """A manifest entry as a writer of the bucket could put it there: running, no replica files yet."""
    from agentshards._replication.manifest import ManifestEntry, write_manifest
    from agentshards._replication.objectstore import store_for
    from agentshards._replication.replica import parse_replica

    where = parse_replica(replica, os.environ)
    write_manifest(store_for(where, os.environ), where, ManifestEntry(
        agent_id=agent_id, status="running", target=target, input_digest="-", run_id="", code_fingerprint=None,
        steps=0, updated_at=time.time(), inputs_json='{"x":3}'))


def test_recover_refuses_a_manifest_target_outside_the_app_dir_and_runs_an_allowed_one(
        tmp_path: Path, outside: Path) -> None:
    from agent_process import TESTS_DIR

    replica = str(tmp_path / "replica")
    _ghost_manifest(replica, "shell", "os:system")
    _ghost_manifest(replica, "planted", "hostile_mod:agent")
    _ghost_manifest(replica, "honest", "sample_agents:two_steps")
    results = recover(tmp_path / "b", replica, take_over=True, app_dir=TESTS_DIR, lease_ttl_s=1)
    assert isinstance(results["shell"], InvalidTarget) and results["shell"].agent_id == "shell"
    assert isinstance(results["planted"], InvalidTarget) and "hostile_mod" in str(results["planted"])
    assert results["honest"]["b"]["v"] == 12  # one refused agent does not keep the others from recovering
    assert _imports(outside) == 0 and "hostile_mod" not in sys.modules
    assert {e.agent_id: e.status for e in list_fleet(replica)}["planted"] == "running"  # left for a later recover

    env = {**os.environ, "PYTHONPATH": str(outside)}  # where the operator's trusted module lives, for workers
    again = recover(tmp_path / "c", replica, take_over=True, app_dir=TESTS_DIR, lease_ttl_s=1, env=env,
                    allow_targets=["hostile_mod:*"])
    assert again["planted"] == {"v": 30} and isinstance(again["shell"], InvalidTarget)


def test_retry_refuses_a_shard_target_outside_the_app_dir(tmp_path: Path, outside: Path) -> None:
    import apsw

    from agentshards import AgentFailed, run_agent

    import sample_agents
    from agent_process import TESTS_DIR

    data = tmp_path / "d"
    with pytest.raises(AgentFailed):
        run_agent(sample_agents.fails_until, agent_id="flaky", data_dir=data, marker=str(tmp_path / "never"))
    with apsw.Connection(str(data / "flaky.db")) as conn:  # a shard fetched from a bucket someone wrote to
        conn.execute("UPDATE workflows SET target = 'hostile_mod:agent'")
    cli = [sys.executable, "-m", "agentshards", "retry", "flaky", "--data-dir", str(data), "--app-dir", str(TESTS_DIR)]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, "PYTHONPATH": str(outside)}
    refused = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "refusing to import the stored target 'hostile_mod:agent'" in refused.stderr
    assert "Traceback" not in refused.stderr and _imports(outside) == 0
    allowed = subprocess.run([*cli, "--allow-target", "hostile_mod:agent"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert _imports(outside) == 1, allowed.stderr  # admitted: imported (the run then goes its own way)
