"""One-agent commands: inspect, logs, cancel, retry, fork, delete."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from .output import (
    OK,
    PENDING,
    allow_target_option,
    data_dir_option,
    emit,
    existing_data_dir,
    fail,
    guarded,
    json_option,
    replica_option,
    to_jsonable,
    warn,
)


def _valid(agent_id: str) -> str:
    """Ids first: a bad id is bad input (exit 2) whatever state the data dir is in."""
    from .._core.shard import validate_agent_id

    return guarded(lambda: validate_agent_id(agent_id))


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _llm_summary(output_json: str) -> str:
    """An LLM step as a person reads it: the answer's text, not the first characters of its JSON."""
    try:
        answer = json.loads(output_json)
    except ValueError:
        return output_json[:70]
    if isinstance(answer, dict) and "final" in answer and "events" in answer:
        answer = answer["final"]  # a streamed answer: its chunks, and the answer they assemble to
    if isinstance(answer, dict):
        choices = answer.get("choices") or []
        if choices and isinstance(choices[0], dict):
            message = choices[0].get("message") or {}
            if message.get("tool_calls"):
                names = [c.get("function", {}).get("name", "?") for c in message["tool_calls"]]
                return "tool calls: " + ", ".join(names)
            return " ".join(str(message.get("content") or "").split())[:100]
        if answer.get("object") == "response":
            texts = [c.get("text", "") for item in answer.get("output", []) if isinstance(item, dict)
                     for c in item.get("content", []) or [] if isinstance(c, dict)]
            calls = [item.get("name", "?") for item in answer.get("output", [])
                     if isinstance(item, dict) and item.get("type") == "function_call"]
            return ("tool calls: " + ", ".join(calls)) if calls else " ".join(" ".join(texts).split())[:100]
    return output_json[:70]


@click.command("inspect")
@click.argument("agent_id")
@data_dir_option()
@click.option("--replica", default=None, help="Also show the agent's owner node and generation from this "
                                               "replica's manifest (read only).")
@json_option
def inspect_cmd(agent_id: str, data_dir: str, replica: str | None) -> None:
    """Show an agent's runs: when, how long, why a run failed, and each completed step."""
    from .._fleet.report import inspect_agent

    _valid(agent_id)
    existing_data_dir(data_dir)
    report = guarded(lambda: inspect_agent(data_dir, agent_id))
    owner = None
    if replica is not None:
        from .._replication.restore import fleet_entry

        owner = guarded(lambda: fleet_entry(replica, agent_id))

    def text() -> None:
        click.echo(f"agent {report.agent_id} ({report.path})")
        if owner is not None:
            click.echo(f"  owner: node {owner.node or '-'} (generation {owner.generation}, live {owner.live}), "
                       f"published {owner.status}")
        for entry in report.runs:
            run = entry.run
            took = (run.finished_at or time.time()) - run.created_at
            click.echo(f"  run {run.id[:12]} #{run.seq} {run.status}  started {_when(run.created_at)}, "
                       f"{'took' if run.finished_at else 'running for'} {took:.1f}s  {run.target}")
            click.echo(f"    inputs {run.input_json[:100]}")
            if run.error_json:
                error = json.loads(run.error_json)
                click.echo(f"    why: {error.get('type', '?')}: {str(error.get('message', ''))[:300]}")
            previous = run.created_at
            for step in entry.steps:
                flag = " (rejected)" if step.outcome == "error" else ""
                shown = _llm_summary(step.output_json) if step.kind == "llm" else step.output_json[:70]
                click.echo(f"    {_when(step.completed_at)} +{step.completed_at - previous:6.2f}s {step.kind:<4} "
                           f"{step.name:<24} {shown}{flag}")
                previous = step.completed_at
            for attempt in entry.in_flight:
                click.echo(f"    IN FLIGHT {attempt.step_name}: attempt {attempt.attempt} sent "
                           f"{_when(attempt.started_at)}, never recorded")
            spend = entry.spend
            if spend.calls or spend.replayed_calls:
                click.echo(f"    LLM: {spend.calls} calls, ${spend.spent_usd:.6f}; saved ${spend.saved_usd:.6f} "
                           f"by {spend.replayed_calls} replays")

    emit(report if replica is None else {**to_jsonable(report), "owner": to_jsonable(owner)}, text)


@click.command()
@click.argument("agent_id")
@data_dir_option()
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(0), help="Last N lines (0: all).")
@json_option
def logs(agent_id: str, data_dir: str, lines: int) -> None:
    """Print an agent's log file (what its worker logged while running it)."""
    agent_id = _valid(agent_id)
    data = existing_data_dir(data_dir)
    path = data / ".fleet" / "logs" / f"{agent_id}.log"
    if not path.exists():
        from .._base.errors import ShardError

        fail(ShardError(f"no log at {path}", agent_id=agent_id,
                        hint="logs exist for agents a fleet ran (run, recover)"))
    text_lines = path.read_text(errors="replace").splitlines()
    shown = text_lines[-lines:] if lines else text_lines
    emit({"agent_id": agent_id, "path": str(path), "lines": shown}, lambda: click.echo("\n".join(shown)))


fleet_option = click.option(
    "--fleet", "through_fleet", is_flag=True,
    help="Act through the replica prefix, on whichever node owns the agent (needs --replica).")
wait_option = click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=120.0, show_default=True,
                           help="With --fleet: seconds to wait for a node to carry the request out.")


@click.command()
@click.argument("agent_id")
@data_dir_option()
@replica_option()
@click.option("--reason", default="cancelled by an operator", show_default=True)
@fleet_option
@wait_option
@json_option
def cancel(agent_id: str, data_dir: str, replica: str | None, reason: str, through_fleet: bool, wait_s: float) -> None:
    """End an agent's open run as cancelled (final). Without --fleet the fleet must not be running."""
    from .._fleet.run import cancel_agent

    _valid(agent_id)
    if through_fleet:
        from .._fleet.requests import cancel_in_fleet

        _emit_request(guarded(lambda: cancel_in_fleet(agent_id, _fleet_replica(replica, agent_id), reason=reason,
                                                      wait_s=wait_s)))
    existing_data_dir(data_dir)
    run = guarded(lambda: cancel_agent(agent_id, data_dir, reason))
    emit({"agent_id": agent_id, "run": to_jsonable(run)},
         lambda: click.echo(f"{agent_id}: run {run.id[:12]} {run.status}"))


@click.command()
@click.argument("agent_id")
@data_dir_option()
@replica_option()
@click.option("--app-dir", default=".", show_default=True, help="Put on sys.path to import the agent's code.")
@allow_target_option
@fleet_option
@wait_option
@json_option
def retry(agent_id: str, data_dir: str, replica: str | None, app_dir: str, allow_targets: tuple[str, ...],
          through_fleet: bool, wait_s: float) -> None:
    """Run a failed agent again from its last completed step, or resume one its fleet gave up on (with
    --fleet: on whichever node claims it)."""
    from .._fleet.run import retry_agent

    _valid(agent_id)
    if through_fleet:
        from .._fleet.requests import retry_in_fleet

        _emit_request(guarded(lambda: retry_in_fleet(agent_id, _fleet_replica(replica, agent_id), wait_s=wait_s)))
    existing_data_dir(data_dir)
    sys.path.insert(0, str(Path(app_dir).resolve()))
    result = guarded(lambda: retry_agent(agent_id, data_dir, replica=replica, app_dir=app_dir,
                                         allow_targets=allow_targets))
    emit({"agent_id": agent_id, "result": result},
         lambda: click.echo(f"{agent_id}: succeeded: {json.dumps(result, default=str)[:500]}"))


@click.command()
@click.argument("agent_id")
@click.option("--at", "at_step", required=True,
              help="The first step to run afresh: its name, or its 1-based position as `inspect` lists steps.")
@data_dir_option()
@click.option("--inputs", "inputs_json", default=None, help="New inputs as a JSON object (default: unchanged).")
@allow_target_option
@json_option
def fork(agent_id: str, at_step: str, data_dir: str, inputs_json: str | None, allow_targets: tuple[str, ...]) -> None:
    """Start a new run that keeps the steps before --at; run the agent again to continue from there."""
    from .._base.errors import InvalidInputs
    from .._fleet.run import fork_run

    _valid(agent_id)
    existing_data_dir(data_dir)
    inputs: dict[str, Any] | None = None
    if inputs_json is not None:
        try:
            inputs = json.loads(inputs_json)
        except ValueError as exc:
            fail(InvalidInputs(f"--inputs is not JSON: {exc}", agent_id=agent_id,
                               hint='e.g. --inputs \'{"topic": "wal"}\''))
        if not isinstance(inputs, dict):
            fail(InvalidInputs("--inputs must be a JSON object", agent_id=agent_id,
                               hint='e.g. --inputs \'{"topic": "wal"}\''))
    step: int | str = int(at_step) if at_step.isdigit() else at_step
    run_id = guarded(lambda: fork_run(agent_id, data_dir, at_step=step, inputs=inputs, allow_targets=allow_targets))
    emit({"agent_id": agent_id, "run_id": run_id},
         lambda: click.echo(f"{agent_id}: new run {run_id[:12]} keeps the steps before {at_step!s}; "
                            "run the agent again to continue"))


@click.command()
@click.argument("agent_id")
@data_dir_option()
@replica_option()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@fleet_option
@wait_option
@json_option
def delete(agent_id: str, data_dir: str, replica: str | None, yes: bool, dry_run: bool, through_fleet: bool,
           wait_s: float) -> None:
    """Remove an agent everywhere: local shard, live replica, manifest, archive (with --fleet: stopped and
    removed by whichever node owns it, then the replica's copies)."""
    from .._replication.archive import delete_agent

    _valid(agent_id)
    if through_fleet:
        _fleet_replica(replica, agent_id)
    where = ("the shard on the node that runs it" if through_fleet else "local shard") + (
        ", replica, manifest and archive" if replica else "")
    if dry_run:
        emit({"agent_id": agent_id, "would_remove": where, "removed": []},
             lambda: click.echo(f"{agent_id}: would remove its {where} (dry run: nothing removed)"))
        sys.exit(OK)
    if not yes:
        if not sys.stdin.isatty():
            fail(_refuse_unconfirmed(agent_id))
        if not click.confirm(f"delete agent {agent_id} everywhere ({where})?"):
            warn("nothing deleted")
            sys.exit(1)
    if through_fleet:
        from .._fleet.requests import delete_in_fleet

        _emit_request(guarded(lambda: delete_in_fleet(agent_id, _fleet_replica(replica, agent_id), wait_s=wait_s)))
    removed = guarded(lambda: delete_agent(agent_id, data_dir, replica))
    emit({"agent_id": agent_id, "removed": removed},
         lambda: click.echo(f"{agent_id}: removed {', '.join(removed) or 'nothing (not found)'}"))


def _fleet_replica(replica: str | None, agent_id: str) -> str:
    from .._base.errors import InvalidInputs

    if replica is None:
        fail(InvalidInputs("--fleet acts through the replica prefix: pass --replica", agent_id=agent_id,
                           hint="the prefix the nodes share, e.g. --replica s3://bucket/fleet"))
    return replica


def _emit_request(outcome: Any) -> NoReturn:
    """Print what became of a request made through the prefix; exit 0 when it was carried out, 3 when it
    is still waiting for a node (it stays in the entry: the next node that owns the agent acts on it)."""
    emit({"agent_id": outcome.agent_id, "request": outcome.request, "outcome": outcome.outcome,
          "node": outcome.node, "done": outcome.done, "removed": list(outcome.removed)},
         lambda: click.echo(f"{outcome.agent_id}: {outcome.outcome}" + (f" (node {outcome.node})" if outcome.node
                                                                       else "")
                            + ("" if outcome.done else _pending_text(outcome.request))))
    sys.exit(OK if outcome.done else PENDING)


def _pending_text(request: str) -> str:
    if request == "delete":
        return ("; its node has not let go of it yet: nothing was deleted, and no node claims it from now on; run "
                "the command again (a node that is gone is expired once its lease has lapsed)")
    return (f"; no node carried the {request} out yet: it stays in the agent's entry for the node that owns it "
            "or the next one to claim it")


def _refuse_unconfirmed(agent_id: str) -> Exception:
    from .._base.errors import InvalidInputs

    return InvalidInputs("deleting needs confirmation and there is no terminal to ask", agent_id=agent_id,
                         hint="pass --yes (or --dry-run to see what would go)")


COMMANDS = [inspect_cmd, logs, cancel, retry, fork, delete]
