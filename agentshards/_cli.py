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
@click.option("--data-dir", default="./agentshards-demo", show_default=True, help="Where agent shards go.")
@click.option("--agents", default=3, show_default=True, type=click.IntRange(1, 100))
def demo(data_dir: str, agents: int) -> None:
    """Run example agents offline (built-in fake LLM, local files), then replay them for free."""
    from ._demo import run_demo

    _guard(lambda: run_demo(data_dir, agents=agents, echo=click.echo))


@main.command("inspect")
@click.argument("agent_id")
@click.option("--data-dir", default="./agentshards-demo", show_default=True)
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
