"""The ``agentshards`` command: parse, call one library function, print, map errors to exit codes.

Exit codes: 0 success, 1 a failure (agent failed, file unusable), 2 bad input (ids, targets, inputs).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click

from . import __version__
from ._errors import AgentShardsError


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


@main.command()
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True, help="Where agent shards go.")
@click.option("--replica", default=None, help="Replica URL or directory [default: beside the data dir].")
@click.option("--agents", default=3, show_default=True, type=click.IntRange(1, 100))
def demo(data_dir: str, replica: str | None, agents: int) -> None:
    """Run example agents offline (fake LLM, local replica), lose the node, restore, replay for free."""
    from ._demo import run_demo

    _guard(lambda: run_demo(data_dir, replica=replica, agents=agents, echo=click.echo))


@main.command()
@click.argument("agent_ids", nargs=-1, required=False)
@click.option("--replica", required=True, help="s3://bucket/prefix or a directory.")
@click.option("--data-dir", required=True)
@click.option("--overwrite", is_flag=True, help="Replace existing local shards.")
@click.option("--all", "all_unfinished", is_flag=True, help="Every agent the manifest lists as unfinished.")
def restore(agent_ids: tuple[str, ...], replica: str, data_dir: str, overwrite: bool, all_unfinished: bool) -> None:
    """Restore agents from the replica (verified, atomic), e.g. on a fresh machine after node loss."""
    from ._restore import list_fleet, restore_agents

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
@click.argument("agent_id", required=False)
@click.option("--data-dir", default="./agentshards-demo/data", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def spend(agent_id: str | None, data_dir: str, as_json: bool) -> None:
    """LLM spend per agent and for the data dir: cost, calls, tokens, saved by replay, in flight."""
    from ._report import spend_report

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
@click.option("--replica", required=True, help="s3://bucket/prefix or a directory.")
@click.option("--json", "as_json", is_flag=True)
def fleet(replica: str, as_json: bool) -> None:
    """List the agents a replica's manifest knows, with their last published state."""
    from ._restore import list_fleet

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
    from ._report import inspect_agent

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
