"""Read-only commands: status (and --watch), spend, query, dashboard. None of them creates or changes a file."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import click

from .output import (
    CTX,
    FAILED,
    OK,
    data_dir_option,
    emit,
    existing_data_dir,
    guarded,
    json_option,
    natural_key,
)


def _status_text(snapshot: dict[str, Any], states: tuple[str, ...]) -> list[str]:
    rows = [a for a in snapshot["agents"] if not states or a["status"] in states]
    rows.sort(key=lambda a: natural_key(a["agent_id"]))
    counts = Counter(a["status"] for a in snapshot["agents"])
    lines = [f"{len(snapshot['agents'])} agents: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
             + f"; spent ${snapshot['totals']['spent_usd']:.6f}, saved ${snapshot['totals']['saved_usd']:.6f}",
             f"{'agent':<24} {'status':<16} {'steps':>6} {'llm':>5} {'cost':>11} {'restarts':>8} {'lag':>7}  why"]
    for a in rows:
        lag = "" if a.get("lag_s") is None else f"{a['lag_s']:.1f}s"
        owner = f"  node={a['node'] or '-'} gen={a['generation']}" if "generation" in a else ""
        lines.append(f"{a['agent_id']:<24} {a['status']:<16} {a['steps']:>6} {a['llm_calls']:>5} "
                     f"${a['spent_usd']:>10.6f} {a['restarts']:>8} {lag:>7}  {a['reason'] or ''}{owner}")
    for e in snapshot["errors"]:
        lines.append(f"{e['agent_id']:<24} UNREADABLE  {e['error']}")
    return lines


@click.command()
@data_dir_option()
@click.option("--state", "states", multiple=True, help="Only agents in this state (repeatable).")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.2))
@click.option("--replica", default=None, help="Also show each agent's owner node and generation from this "
                                               "replica's manifest (read only).")
@json_option
def status(data_dir: str, states: tuple[str, ...], watch: bool, interval: float, replica: str | None) -> None:
    """Every agent: state, steps, LLM calls, cost, restarts, why it failed; counts by state first.

    The shards are the truth; a running supervisor's live view (restarts, restarting) is added only while
    it still holds the data dir. An unreadable file is reported on its own line and the exit code is 1.
    """
    from .._fleet.views import FleetView

    data = existing_data_dir(data_dir)
    view = FleetView(data)
    try:
        snapshot = guarded(view.snapshot)
        if watch and not CTX.json:
            _watch(view, states, interval)
            sys.exit(OK)
    finally:
        view.close()
    if replica is not None:
        from .._replication.restore import list_fleet

        owners = {e.agent_id: e for e in guarded(lambda: list_fleet(replica))}
        for row in snapshot["agents"]:
            entry = owners.get(row["agent_id"])
            row["node"], row["generation"] = (entry.node, entry.generation) if entry else (None, None)
    agents = sorted((a for a in snapshot["agents"] if not states or a["status"] in states),
                    key=lambda a: natural_key(a["agent_id"]))
    payload = {"data_dir": snapshot["data_dir"], "states": snapshot["states"], "totals": snapshot["totals"],
               "agents": agents, "errors": snapshot["errors"]}
    emit(payload, lambda: click.echo("\n".join(_status_text(snapshot, states))))
    for error in snapshot["errors"] if CTX.json else []:
        click.echo(f"error: {error['agent_id']}: {error['error']}", err=True)
    sys.exit(FAILED if snapshot["errors"] else OK)


def _watch(view: Any, states: tuple[str, ...], interval: float) -> None:
    """A live table on a terminal; elsewhere the table again every interval, separated by a blank line."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    try:
        if console.is_terminal:
            with Live(Text(""), console=console, refresh_per_second=4, screen=False) as live:
                while True:
                    lines = _status_text(view.snapshot(), states)
                    live.update(Text("\n".join([time.strftime("%H:%M:%S"), *lines])))
                    time.sleep(interval)
        while True:
            click.echo("\n".join([time.strftime("%H:%M:%S"), *_status_text(view.snapshot(), states)]) + "\n")
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@click.command()
@click.argument("agent_id", required=False)
@data_dir_option()
@json_option
def spend(agent_id: str | None, data_dir: str) -> None:
    """LLM spend per agent and for the data dir: cost, calls, tokens, saved by replay, in flight."""
    from .._fleet.report import spend_report

    existing_data_dir(data_dir)
    report = guarded(lambda: spend_report(data_dir, agent_id))

    def money(value: float | None) -> str:
        return "n/a" if value is None else f"${value:.6f}"

    def text() -> None:
        click.echo(f"{'agent':<24} {'spent':>12} {'calls':>6} {'saved':>12} {'replayed':>8} {'in flight':>9} "
                   f"{'unrecorded (est.)':>18}")
        for name, s in [*sorted(report.agents.items(), key=lambda kv: natural_key(kv[0])), ("TOTAL", report.total)]:
            unpriced = f" ({s.unpriced_calls} unpriced)" if s.unpriced_calls else ""
            click.echo(f"{name:<24} {money(s.spent_usd):>12} {s.calls:>6} {money(s.saved_usd):>12} "
                       f"{s.replayed_calls:>8} {s.in_flight_calls:>9} {money(s.unrecorded_estimate_usd):>18}{unpriced}")

    emit(report, text)
    for agent, error in sorted(report.errors.items()):
        click.echo(f"error: {agent}: {error}", err=True)
    sys.exit(FAILED if report.errors else OK)


@click.command()
@click.argument("sql")
@data_dir_option()
@click.option("--reduce", "reduce_sql", default=None, help="SQL over the merged rows (a table named `rows`).")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Stop the query after this many seconds (every shard and --reduce together).")
@json_option
def query(sql: str, data_dir: str, reduce_sql: str | None, timeout_s: float) -> None:
    """Read-only SQL against every shard; rows merged with an agent_id column. Ctrl-C stops it."""
    from .._fleet.query import query_fleet

    existing_data_dir(data_dir)
    result = guarded(lambda: query_fleet(data_dir, sql, reduce=reduce_sql, timeout_s=timeout_s))

    def text() -> None:
        click.echo("\t".join(result.columns))
        for row in result.rows:
            click.echo("\t".join("" if v is None else str(v) for v in row))

    emit({"columns": result.columns, "rows": [dict(zip(result.columns, row, strict=False)) for row in result.rows]},
         text)


@click.command()
@data_dir_option()
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0: any free port).")
def dashboard(data_dir: str, port: int) -> None:
    """Serve a live web page of the fleet on 127.0.0.1: states, restarts, spend, one agent's step timeline."""
    from .dashboard import serve

    existing_data_dir(data_dir)
    guarded(lambda: serve(data_dir, port, click.echo))


COMMANDS = [status, spend, query, dashboard]
