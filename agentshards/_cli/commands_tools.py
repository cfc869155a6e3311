"""Tools around the fleet: the demo, the built-in fake LLM, a health check of the set-up, shell completion."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from .output import FAILED, OK, REPLICA_ENV, emit, guarded, json_option, replica_option

DEMO_DATA_DIR = "./agentshards-demo/data"


@click.command()
@click.option("--data-dir", default=DEMO_DATA_DIR, show_default=True,
              help="The demo's own directory: it deletes it to show node loss, so it is not the fleet's.")
@click.option("--replica", default=None, help="Replica URL or directory [default: beside the data dir].")
@click.option("--agents", default=3, show_default=True, type=click.IntRange(1, 100))
@json_option
def demo(data_dir: str, replica: str | None, agents: int) -> None:
    """Run example agents offline (fake LLM, local replica), lose the node, restore, replay for free."""
    from .demo import run_demo
    from .output import say

    result = guarded(lambda: run_demo(data_dir, replica=replica, agents=agents, echo=say))
    emit({"requests_first_pass": result["requests_first_pass"], "requests_replay": result["requests_replay"],
          "restarts": result["restarts"], "agents": sorted(result["results"])})


@click.command("fake-llm")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--delay", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per answer.")
def fake_llm(port: int, delay: float) -> None:
    """Serve the built-in OpenAI-compatible fake LLM on 127.0.0.1 for offline runs, until Ctrl-C.

    Point agents at it with OPENAI_BASE_URL=<the printed URL> and any OPENAI_API_KEY.
    """
    from ..testing import FakeLLMServer

    with guarded(lambda: FakeLLMServer(port=port, delay_s=delay)) as server:
        click.echo(f"fake LLM at {server.base_url} (export OPENAI_BASE_URL={server.base_url} OPENAI_API_KEY=fake)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


def _check(name: str, run: Any) -> dict[str, Any]:
    try:
        detail = run()
        return {"check": name, "ok": True, "detail": detail, "fix": None}
    except Exception as exc:
        from .._base.errors import AgentShardsError

        hint = exc.hint if isinstance(exc, AgentShardsError) else None
        message = exc.message if isinstance(exc, AgentShardsError) else f"{type(exc).__name__}: {exc}"
        return {"check": name, "ok": False, "detail": message, "fix": hint}


@click.command()
@click.option("--data-dir", envvar="AGENTSHARDS_DATA_DIR", default=None, show_envvar=True,
              help="Also check this data dir (it is not created).")
@replica_option()
@json_option
def doctor(data_dir: str | None, replica: str | None) -> None:
    """Check the set-up: Litestream, SQLite, the data dir, and the replica (bucket, credentials, writes)."""
    from .._base.config import LitestreamConfig
    from .._core.sqlite import require_sqlite, sqlite_version
    from .._replication.litestream import check_version, find_binary

    env = os.environ
    checks = [
        _check("litestream", lambda: f"{find_binary(LitestreamConfig(), env)} "
                                     f"(version {check_version(find_binary(LitestreamConfig(), env))})"),
        _check("sqlite", lambda: _sqlite(require_sqlite, sqlite_version)),
        _check("platform", _platform),
    ]
    if "AWS_CA_BUNDLE" in env:
        checks.append({"check": "environment", "ok": True, "fix": None,
                       "detail": "AWS_CA_BUNDLE is set: it is kept from Litestream, which cannot load it"})
    if data_dir is not None:
        checks.append(_check("data dir", lambda: _data_dir(Path(data_dir))))
    if replica is not None:
        checks += _replica_checks(replica, env)
    else:
        checks.append({"check": "replica", "ok": True, "fix": None,
                       "detail": f"none given (pass --replica or set {REPLICA_ENV} to check one)"})
    failed = [c for c in checks if not c["ok"]]

    def text() -> None:
        for c in checks:
            mark = "ok  " if c["ok"] else "FAIL"
            click.echo(f"{mark} {c['check']:<18} {c['detail']}" + (f"\n     fix: {c['fix']}" if c["fix"] else ""))

    emit({"ok": not failed, "checks": checks}, text)
    sys.exit(FAILED if failed else OK)


def _sqlite(require: Any, version: Any) -> str:
    require()
    return "SQLite " + ".".join(map(str, version()))


def _platform() -> str:
    if not sys.platform.startswith("linux"):
        from .._base.errors import AgentShardsError

        raise AgentShardsError(f"{sys.platform} is not supported",
                               hint="agentshards runs on Linux (fcntl locks, prctl parent-death signals)")
    return f"{sys.platform}, Python {sys.version.split()[0]}"


def _data_dir(path: Path) -> str:
    from .._base.errors import ShardError

    if not path.exists():
        raise ShardError(f"{path} does not exist", hint="it is created by the first run; check the path")
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ShardError(f"{path} is not a writable directory", hint="fix its permissions or pick another")
    from .._core.shard import shard_ids

    return f"{path.resolve()} ({len(shard_ids(path))} shards)"


def _replica_checks(replica: str, env: Any) -> list[dict[str, Any]]:
    from .._replication.objectstore import credential_source, store_for
    from .._replication.replica import parse_replica

    out = []
    target_box: dict[str, Any] = {}

    def parse() -> str:
        target_box["target"] = parse_replica(replica, env)
        return str(target_box["target"].describe())

    out.append(_check("replica url", parse))
    if "target" not in target_box:
        return out
    target = target_box["target"]
    if target.kind == "s3":
        def credentials() -> str:
            found = credential_source()
            if found is None:
                from .._base.errors import InvalidReplica

                raise InvalidReplica("no AWS credentials found", hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                     "a profile, or run where an instance/pod role applies")
            return f"found (from {found})"

        out.append(_check("credentials", credentials))
    store_box: dict[str, Any] = {}

    def reach() -> str:
        store = store_for(target, env)
        store.check_readable()
        store_box["store"] = store  # only a reachable store is probed further
        return "reachable"

    out.append(_check("bucket", reach))
    if "store" in store_box:
        def conditional() -> str:
            from .._replication.lease import probe_conditional_writes

            if target.kind == "file":
                return "a directory replica: file locks, which fence on this host only"
            probe_conditional_writes(store_box["store"], target)  # a probe key of its own, deleted after
            return "honoured (If-None-Match, If-Match): node leases and claims can fence"

        out.append(_check("conditional writes", conditional))
    return out


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. `eval "$(agentshards completion bash)"` in ~/.bashrc."""
    from click.shell_completion import get_completion_class

    root = click.get_current_context().find_root().command
    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(root, {}, "agentshards", "_AGENTSHARDS_COMPLETE").source())


COMMANDS = [demo, fake_llm, doctor, completion]
