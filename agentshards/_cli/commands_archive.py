"""Archive commands: archive finished agents, list and expire archives, fetch one back."""

from __future__ import annotations

import sys
from typing import Any

import click

from .output import (
    data_dir_option,
    emit,
    existing_data_dir,
    fail,
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
from .progress import Counts, Progress


@click.command()
@click.argument("agent_ids", nargs=-1)
@replica_option(required=True)
@data_dir_option()
@click.option("--all-finished", is_flag=True, help="Every finished agent in the data dir.")
@json_option
def archive(agent_ids: tuple[str, ...], replica: str, data_dir: str, all_finished: bool) -> None:
    """Archive finished agents: one verified object each in the replica; local files removed last."""
    from .._core.shard import shard_ids
    from .._fleet.views import agent_summary
    from .._replication.archive import archive_agent
    from .._replication.states import ENDED

    ids = list(agent_ids)
    results: dict[str, Any] = {}
    if all_finished:
        data = existing_data_dir(data_dir)
        for agent_id in shard_ids(data):
            try:
                if agent_summary(data, agent_id).status in ENDED:
                    ids.append(agent_id)
            except Exception as exc:  # one unreadable shard is reported on its own line; the rest go on
                results[agent_id] = exc
    if not ids and not results:
        if all_finished:
            emit({"agents": {}, "ok": 0, "failed": 0}, lambda: click.echo("no finished agents to archive"))
            sys.exit(0)
        usage("name agents to archive, or pass --all-finished")
    counts = Counts()
    with Progress("archive", len(ids), counts):
        for agent_id in sorted(dict.fromkeys(ids), key=natural_key):
            try:
                results[agent_id] = archive_agent(agent_id, data_dir, replica)
                counts.add("succeeded")
            except Exception as exc:  # per agent: report it, keep going, exit 1 at the end
                results[agent_id] = exc
                counts.add("failed")
    finish_batch(results, lambda agent_id, e: f"{agent_id}: archived to {e.key} ({e.size} bytes, sha256 "
                                              f"{e.sha256[:16]}...)", "agents archived")


@click.command()
@replica_option(required=True)
@click.option("--expire-older-than-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Delete archives older than this many days (asks first; see --yes, --dry-run).")
@click.option("--yes", is_flag=True, help="Expire without asking.")
@click.option("--dry-run", is_flag=True, help="Name the archives that would expire; delete nothing.")
@json_option
def archives(replica: str, expire_older_than_days: float | None, yes: bool, dry_run: bool) -> None:
    """List archived agents (and optionally expire old archives)."""
    from .._replication.archive import expire_archives, list_archives

    expired: list[str] = []
    if expire_older_than_days is not None:
        days = expire_older_than_days
        doomed = guarded(lambda: expire_archives(replica, days, dry_run=True))
        if doomed and not dry_run and not yes:
            if not sys.stdin.isatty():
                from .._base.errors import InvalidInputs

                fail(InvalidInputs(f"expiring {len(doomed)} archives needs confirmation and there is no terminal",
                                   hint="pass --yes, or --dry-run to see which"))
            if not click.confirm(f"delete {len(doomed)} archives older than {days:g} days?"):
                warn("nothing deleted")
                sys.exit(1)
        expired = doomed if dry_run else guarded(lambda: expire_archives(replica, days))
        verb = "would expire" if dry_run else "expired"
        say(f"{verb} {len(expired)} archives" + (f": {', '.join(expired)}" if expired else ""))
    entries = sorted(guarded(lambda: list_archives(replica)), key=lambda e: natural_key(e.agent_id))

    def text() -> None:
        for e in entries:
            click.echo(f"{e.agent_id:<24} steps={e.steps:<5} sha256={(e.archive_sha256 or '')[:16]}... "
                       f"{e.archive_key}")

    emit({"archives": to_jsonable(entries), "expired": expired, "dry_run": dry_run}, text)


@click.command()
@click.argument("agent_id")
@replica_option(required=True)
@data_dir_option()
@json_option
def fetch(agent_id: str, replica: str, data_dir: str) -> None:
    """Bring an archived agent back (verified) into the data dir, e.g. to inspect it."""
    from .._replication.archive import fetch_archive

    path = guarded(lambda: fetch_archive(agent_id, data_dir, replica))
    emit({"agent_id": agent_id, "path": str(path)}, lambda: click.echo(f"{agent_id}: fetched to {path}"))


COMMANDS = [archive, archives, fetch]
