"""Fleet commands: run a fleet, recover after node loss, restore agents, list a replica's fleet."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .output import (
    INTERRUPTED,
    allow_target_option,
    data_dir_option,
    emit,
    finish_batch,
    guarded,
    json_option,
    natural_key,
    replica_option,
    say,
    to_jsonable,
    usage,
    warn,
)
from .progress import Counts, Progress, fleet_progress, outcome_states


def _describe_result(agent_id: str, value: Any) -> str:
    return f"{agent_id}: ok"


@click.command()
@click.argument("target")
@click.option("--agents", "count", type=click.IntRange(1, 100_000), help="Run N agents agent-0001.. with no inputs.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False),
              help='JSONL, one agent per line: {"agent_id": "...", "inputs": {...}}.')
@data_dir_option()
@replica_option()
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--agents-per-worker", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--app-dir", default=".", show_default=True, help="Put on sys.path to import TARGET.")
@click.option("--lease-ttl", default=30.0, show_default=True, type=float, help="This node's lease, seconds.")
@click.option("--archive-finished", is_flag=True, help="Archive each agent to the replica when it finishes.")
@click.option("--new-run", is_flag=True, help="Start each agent afresh even if it has a run (kept in its journal).")
@click.option("--take-over", is_flag=True, help="Take the replica prefix over from a node that is gone (its lease is "
                                                "watched for TTL + margin first).")
@json_option
def run(target: str, count: int | None, inputs_file: str | None, data_dir: str, replica: str | None,
        concurrency: int, agents_per_worker: int, app_dir: str, lease_ttl: float, archive_finished: bool,
        new_run: bool, take_over: bool) -> None:
    """Run a fleet of TARGET (module:function) agents in the foreground until every one is final."""
    from .._fleet.fleet import Fleet, read_agents_file

    if (count is None) == (inputs_file is None):
        usage("give exactly one of --agents N and --inputs FILE.jsonl")
    agents = {f"agent-{i:04d}": {} for i in range(1, (count or 0) + 1)} if count else guarded(
        lambda: read_agents_file(inputs_file or ""))
    fleet = guarded(lambda: Fleet(data_dir, replica, concurrency=concurrency, agents_per_worker=agents_per_worker,
                                  app_dir=app_dir, lease_ttl_s=lease_ttl, archive_finished=archive_finished,
                                  take_over=take_over))
    with fleet:  # closed whatever happens: an interrupted launch must not leave its lease and Litestream
        guarded(lambda: fleet.launch(target, agents, new_run=new_run))
        say(f"running {len(agents)} agents of {target} in {data_dir}"
            + (f", replicated to {replica}" if replica else ""))
        with fleet_progress("run", Path(data_dir), len(agents)) as progress:
            results = _wait_in_foreground(fleet.wait)
            progress.finish(outcome_states(results))
    finish_batch(results, _describe_result, "agents finished")


def _wait_in_foreground(wait: Callable[[], Any]) -> dict[str, Any]:
    """SIGTERM and Ctrl-C stop the fleet cleanly: workers stopped, Litestream's final sync, locks released."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return dict(guarded(wait))
    except KeyboardInterrupt:
        warn("stopped; unfinished agents resume when they are launched again")
        sys.exit(INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command()
@replica_option(required=True)
@data_dir_option()
@click.option("--take-over", is_flag=True, help="If another node's lease is on the prefix, watch it for that node's "
              "TTL plus margin and take it only if nobody renewed it meanwhile (the node is gone).")
@click.option("--app-dir", default=".", show_default=True, help="Put on sys.path to import the agents' code.")
@click.option("--lease-ttl", default=30.0, show_default=True, type=float)
@allow_target_option
@json_option
def recover(replica: str, data_dir: str, take_over: bool, app_dir: str, lease_ttl: float,
            allow_targets: tuple[str, ...]) -> None:
    """After node loss: restore every unfinished agent from the replica and run them to the end."""
    from .._fleet.fleet import recover as recover_fleet

    with fleet_progress("recover", Path(data_dir), 0) as progress:
        results = _wait_in_foreground(lambda: recover_fleet(data_dir, replica, take_over=take_over, app_dir=app_dir,
                                                            lease_ttl_s=lease_ttl, allow_targets=allow_targets))
        progress.total = len(results)
        progress.finish(outcome_states(results))
    say(f"recovered {len(results)} unfinished agents")
    finish_batch(results, _describe_result, "agents finished")


@click.command()
@click.argument("agent_ids", nargs=-1, required=False)
@replica_option(required=True)
@data_dir_option()
@click.option("--overwrite", is_flag=True, help="Replace existing local shards.")
@click.option("--all", "all_unfinished", is_flag=True,
              help="Every agent the manifest lists as unfinished (running, unsynced, gave_up).")
@json_option
def restore(agent_ids: tuple[str, ...], replica: str, data_dir: str, overwrite: bool, all_unfinished: bool) -> None:
    """Restore agents from the replica (verified, atomic), e.g. on a fresh machine after node loss."""
    from .._replication.restore import list_fleet, restore_agents
    from .._replication.states import is_unfinished

    ids = list(agent_ids)
    if all_unfinished:
        entries = guarded(lambda: list_fleet(replica))
        unfinished = [e.agent_id for e in entries if is_unfinished(e.status)]
        if not unfinished and not ids:
            emit({"agents": {}, "ok": 0, "failed": 0},
                 lambda: click.echo(f"nothing to restore: the replica lists {len(entries)} agents and none is "
                                    "unfinished (`agentshards fleet` shows their states)"))
            return
        ids += unfinished
    if not ids:
        usage("name agents to restore, or pass --all", hint="`agentshards fleet --replica URL` lists them")
    ids = sorted(dict.fromkeys(ids), key=natural_key)
    counts = Counts()
    with Progress("restore", len(ids), counts):
        results: dict[str, Any] = dict(guarded(lambda: restore_agents(
            ids, data_dir, replica, overwrite=overwrite,
            on_done=lambda _, outcome: counts.add("failed" if isinstance(outcome, BaseException) else "succeeded"))))
    finish_batch(results, lambda agent_id, path: f"{agent_id}: restored to {path}", "agents restored")


@click.command()
@replica_option(required=True)
@click.option("--state", "states", multiple=True, help="Only agents in this published state (repeatable).")
@json_option
def fleet(replica: str, states: tuple[str, ...]) -> None:
    """List the agents a replica's manifest knows, with their last published state."""
    from .._replication.restore import list_fleet

    entries = [e for e in guarded(lambda: list_fleet(replica)) if not states or e.status in states]
    entries.sort(key=lambda e: natural_key(e.agent_id))

    def text() -> None:
        for e in entries:
            click.echo(f"{e.agent_id:<24} {e.status:<10} steps={e.steps:<5} node={e.node or '-':<24} "
                       f"gen={e.generation:<3} {e.target}")

    emit(to_jsonable(entries), text)


COMMANDS = [run, recover, restore, fleet]
