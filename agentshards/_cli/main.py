"""The ``agentshards`` command: parse, call one library function, print, map errors to exit codes.

Exit codes: 0 success, 1 a failure (agent failed, file unusable), 2 bad input (ids, targets, inputs).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from .. import __version__
from .._base.errors import AgentShardsError


def _guard(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except AgentShardsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ValueError) else 1)


@click.group()
@click.version_option(__version__, prog_name="agentshards")
def main() -> None:
    """Durable AI agents, one SQLite file each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


@main.command()
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True, help="Where agent shards go.")
@click.option("--replica", default=None, help="Replica URL or directory [default: beside the data dir].")
@click.option("--agents", default=3, show_default=True, type=click.IntRange(1, 100))
def demo(data_dir: str, replica: str | None, agents: int) -> None:
    """Run example agents offline (fake LLM, local replica), lose the node, restore, replay for free."""
    from .demo import run_demo

    _guard(lambda: run_demo(data_dir, replica=replica, agents=agents, echo=click.echo))


@main.command()
@click.argument("agent_ids", nargs=-1, required=False)
@click.option("--replica", required=True, help="s3://bucket/prefix or a directory.")
@click.option("--data-dir", required=True)
@click.option("--overwrite", is_flag=True, help="Replace existing local shards.")
@click.option("--all", "all_unfinished", is_flag=True, help="Every agent the manifest lists as unfinished.")
def restore(agent_ids: tuple[str, ...], replica: str, data_dir: str, overwrite: bool, all_unfinished: bool) -> None:
    """Restore agents from the replica (verified, atomic), e.g. on a fresh machine after node loss."""
    from .._replication.restore import list_fleet, restore_agents

    ids = list(agent_ids)
    if all_unfinished:
        ids += [e.agent_id for e in _guard(lambda: list_fleet(replica)) if e.status == "running"]
    if not ids:
        click.echo("error: name agents to restore, or pass --all (hint: `agentshards fleet` lists them)", err=True)
        sys.exit(2)
    results = _guard(lambda: restore_agents(ids, data_dir, replica, overwrite=overwrite))
    failed = 0
    for agent_id, outcome in sorted(results.items()):
        if isinstance(outcome, Exception):
            failed += 1
            click.echo(f"{agent_id}: FAILED {outcome}", err=True)
        else:
            click.echo(f"{agent_id}: restored to {outcome}")
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("target")
@click.option("--agents", "count", type=click.IntRange(1, 100_000), help="Run N agents agent-0001.. with no inputs.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False),
              help='JSONL, one agent per line: {"agent_id": "...", "inputs": {...}}.')
@click.option("--data-dir", required=True)
@click.option("--replica", default=None, help="s3://bucket/prefix or a directory.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--agents-per-worker", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--app-dir", default=".", show_default=True, help="Put on sys.path to import TARGET.")
@click.option("--lease-ttl", default=30.0, show_default=True, type=float, help="Replica prefix lease, seconds.")
@click.option("--archive-finished", is_flag=True, help="Archive each agent to the replica when it finishes.")
def run(target: str, count: int | None, inputs_file: str | None, data_dir: str, replica: str | None,
        concurrency: int, agents_per_worker: int, app_dir: str, lease_ttl: float, archive_finished: bool) -> None:
    """Run a fleet of TARGET (module:function) agents in the foreground until every one is final."""
    from .._fleet.fleet import Fleet, read_agents_file

    if (count is None) == (inputs_file is None):
        click.echo("error: give exactly one of --agents N and --inputs FILE.jsonl", err=True)
        sys.exit(2)
    agents = {f"agent-{i:04d}": {} for i in range(1, (count or 0) + 1)} if count else _guard(
        lambda: read_agents_file(inputs_file or ""))
    fleet = _guard(lambda: Fleet(data_dir, replica, concurrency=concurrency, agents_per_worker=agents_per_worker,
                                 app_dir=app_dir, lease_ttl_s=lease_ttl, archive_finished=archive_finished))
    _guard(lambda: fleet.launch(target, agents))
    click.echo(f"running {len(agents)} agents of {target} in {data_dir}" + (f", replicated to {replica}" if replica
                                                                            else ""))
    _report_results(_wait_in_foreground(fleet.wait))


def _wait_in_foreground(wait: Any) -> dict[str, Any]:
    """SIGTERM and Ctrl-C stop the fleet cleanly: workers stopped, Litestream's final sync, locks released."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return dict(_guard(wait))
    except KeyboardInterrupt:
        click.echo("stopped; unfinished agents resume when they are launched again", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_results(results: dict[str, Any]) -> None:
    failed = {k: v for k, v in results.items() if isinstance(v, Exception)}
    click.echo(f"{len(results) - len(failed)} succeeded, {len(failed)} failed")
    for agent_id, error in sorted(failed.items()):
        click.echo(f"  {agent_id}: {error}", err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--replica", required=True, help="s3://bucket/prefix or a directory.")
@click.option("--data-dir", required=True, help="A fresh directory on this machine.")
@click.option("--take-over", is_flag=True, help="Replace the expired lease of a node that is gone.")
@click.option("--app-dir", default=".", show_default=True, help="Put on sys.path to import the agents' code.")
@click.option("--lease-ttl", default=30.0, show_default=True, type=float)
def recover(replica: str, data_dir: str, take_over: bool, app_dir: str, lease_ttl: float) -> None:
    """After node loss: restore every unfinished agent from the replica and run them to the end."""
    from .._fleet.fleet import recover as recover_fleet

    results = _wait_in_foreground(lambda: recover_fleet(data_dir, replica, take_over=take_over, app_dir=app_dir,
                                                        lease_ttl_s=lease_ttl))
    click.echo(f"recovered {len(results)} unfinished agents")
    _report_results(results)


@main.command()
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def status(data_dir: str, as_json: bool) -> None:
    """Per agent: status, steps, LLM calls, tokens, cost, restarts (live when a supervisor runs)."""
    from .._fleet.report import data_dir_status

    rows = _guard(lambda: data_dir_status(data_dir))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    click.echo(f"{'agent':<24} {'status':<16} {'steps':>6} {'llm':>5} {'tokens':>9} {'cost':>11} {'restarts':>8}")
    for r in rows:
        click.echo(f"{r.agent_id:<24} {r.status:<16} {r.steps:>6} {r.llm_calls:>5} "
                   f"{r.input_tokens + r.output_tokens:>9} ${r.cost_usd:>10.6f} {r.restarts:>8}")


@main.command()
@click.argument("agent_id", required=False)
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def spend(agent_id: str | None, data_dir: str, as_json: bool) -> None:
    """LLM spend per agent and for the data dir: cost, calls, tokens, saved by replay, in flight."""
    from .._fleet.report import spend_report

    report = _guard(lambda: spend_report(data_dir, agent_id))
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
        return

    def money(value: float | None) -> str:
        return "n/a" if value is None else f"${value:.6f}"

    click.echo(f"{'agent':<24} {'spent':>12} {'calls':>6} {'saved':>12} {'replayed':>8} {'in flight':>9} "
               f"{'unrecorded (est.)':>18}")
    for name, s in [*report.agents.items(), ("TOTAL", report.total)]:
        unpriced = f" ({s.unpriced_calls} unpriced)" if s.unpriced_calls else ""
        click.echo(f"{name:<24} {money(s.spent_usd):>12} {s.calls:>6} {money(s.saved_usd):>12} "
                   f"{s.replayed_calls:>8} {s.in_flight_calls:>9} {money(s.unrecorded_estimate_usd):>18}{unpriced}")


@main.command()
@click.argument("agent_ids", nargs=-1)
@click.option("--replica", required=True, help="s3://bucket/prefix or a directory.")
@click.option("--data-dir", required=True)
@click.option("--all-finished", is_flag=True, help="Every finished agent in the data dir.")
def archive(agent_ids: tuple[str, ...], replica: str, data_dir: str, all_finished: bool) -> None:
    """Archive finished agents: one verified object each in the replica; local files removed last."""
    from .._fleet.report import data_dir_status
    from .._replication.archive import archive_agent

    ids = list(agent_ids)
    if all_finished:
        final = ("succeeded", "failed", "budget_exceeded", "cancelled")
        ids += [r.agent_id for r in _guard(lambda: data_dir_status(data_dir)) if r.status in final]
    if not ids:
        click.echo("error: name agents to archive, or pass --all-finished", err=True)
        sys.exit(2)
    for agent_id in ids:
        entry = _guard(functools.partial(archive_agent, agent_id, data_dir, replica))
        click.echo(f"{agent_id}: archived to {entry.key} ({entry.size} bytes, sha256 {entry.sha256[:16]}...)")


@main.command()
@click.option("--replica", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--expire-older-than-days", type=float, default=None, help="Delete archives older than this.")
def archives(replica: str, as_json: bool, expire_older_than_days: float | None) -> None:
    """List archived agents (and optionally expire old archives)."""
    from .._replication.archive import expire_archives, list_archives

    if expire_older_than_days is not None:
        gone = _guard(lambda: expire_archives(replica, expire_older_than_days))
        click.echo(f"expired {len(gone)} archives" + (f": {', '.join(gone)}" if gone else ""))
    entries = _guard(lambda: list_archives(replica))
    if as_json:
        click.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    for e in entries:
        click.echo(f"{e.agent_id:<24} steps={e.steps:<5} sha256={(e.archive_sha256 or '')[:16]}... {e.archive_key}")


@main.command()
@click.argument("agent_id")
@click.option("--replica", required=True)
@click.option("--data-dir", required=True)
def fetch(agent_id: str, replica: str, data_dir: str) -> None:
    """Bring an archived agent back (verified) into DATA_DIR, e.g. to inspect it."""
    from .._replication.archive import fetch_archive

    click.echo(f"{agent_id}: fetched to {_guard(lambda: fetch_archive(agent_id, data_dir, replica))}")


@main.command()
@click.argument("agent_id")
@click.option("--data-dir", required=True)
@click.option("--replica", default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(agent_id: str, data_dir: str, replica: str | None, yes: bool) -> None:
    """Remove an agent everywhere: local shard, live replica, manifest, archive."""
    from .._core.shard import validate_agent_id
    from .._replication.archive import delete_agent

    _guard(lambda: validate_agent_id(agent_id))
    if not yes and not click.confirm(f"delete agent {agent_id} everywhere (local, replica, manifest, archive)?"):
        click.echo("nothing deleted")
        sys.exit(1)
    removed = _guard(lambda: delete_agent(agent_id, data_dir, replica))
    click.echo(f"{agent_id}: removed {', '.join(removed) or 'nothing (not found)'}")


@main.command()
@click.argument("sql")
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True)
@click.option("--reduce", "reduce_sql", default=None, help="SQL over the merged rows (a table named `rows`).")
@click.option("--json", "as_json", is_flag=True)
def query(sql: str, data_dir: str, reduce_sql: str | None, as_json: bool) -> None:
    """Read-only SQL against every shard; rows merged with an agent_id column."""
    from .._fleet.query import query_fleet

    result = _guard(lambda: query_fleet(data_dir, sql, reduce=reduce_sql))
    if as_json:
        click.echo(json.dumps([dict(zip(result.columns, row, strict=False)) for row in result.rows], default=str))
        return
    click.echo("\t".join(result.columns))
    for row in result.rows:
        click.echo("\t".join("" if v is None else str(v) for v in row))


@main.command()
@click.argument("agent_id")
@click.option("--data-dir", required=True)
@click.option("--reason", default="cancelled by an operator", show_default=True)
def cancel(agent_id: str, data_dir: str, reason: str) -> None:
    """End an agent's open run as cancelled (final). The fleet must not be running."""
    from .._fleet.run import cancel_agent

    run = _guard(lambda: cancel_agent(agent_id, data_dir, reason))
    click.echo(f"{agent_id}: run {run.id[:12]} {run.status}")


@main.command()
@click.argument("agent_id")
@click.option("--data-dir", required=True)
@click.option("--replica", default=None)
@click.option("--app-dir", default=".", show_default=True)
def retry(agent_id: str, data_dir: str, replica: str | None, app_dir: str) -> None:
    """Run a failed agent again from its last completed step, in the foreground."""
    from .._fleet.run import retry_agent

    sys.path.insert(0, str(Path(app_dir).resolve()))
    result = _guard(lambda: retry_agent(agent_id, data_dir, replica=replica))
    click.echo(json.dumps(result, default=str))


@main.command()
@click.option("--replica", required=True, help="s3://bucket/prefix or a directory.")
@click.option("--json", "as_json", is_flag=True)
def fleet(replica: str, as_json: bool) -> None:
    """List the agents a replica's manifest knows, with their last published state."""
    from .._replication.restore import list_fleet

    entries = _guard(lambda: list_fleet(replica))
    if as_json:
        click.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    for e in entries:
        click.echo(f"{e.agent_id:<24} {e.status:<10} steps={e.steps:<5} {e.target}")


@main.command("inspect")
@click.argument("agent_id")
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect_cmd(agent_id: str, data_dir: str, as_json: bool) -> None:
    """Show an agent's runs and completed steps."""
    from .._fleet.report import inspect_agent

    report = _guard(lambda: inspect_agent(data_dir, agent_id))
    if as_json:
        click.echo(json.dumps(asdict(report), default=str, indent=2))
        return
    click.echo(f"agent {report.agent_id} ({report.path})")
    for entry in report.runs:
        run = entry.run
        click.echo(f"  run {run.id[:12]} #{run.seq} {run.status:<10} {run.target} inputs={run.input_json[:80]}")
        for step in entry.steps:
            flag = " (rejected)" if step.outcome == "error" else ""
            click.echo(f"    {step.kind:<4} {step.name:<24} {step.output_json[:70]}{flag}")
        for attempt in entry.in_flight:
            click.echo(f"    IN FLIGHT {attempt.step_name}: attempt {attempt.attempt} sent, never recorded")


@main.command()
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0: any free port).")
def dashboard(data_dir: str, port: int) -> None:
    """Serve a live web page of the fleet on 127.0.0.1: states, restarts, spend, one agent's step timeline."""
    from .dashboard import serve

    _guard(lambda: serve(data_dir, port, click.echo))
