"""Commands of a fleet spread over nodes: run a node, submit agents, list nodes, drain one."""

from __future__ import annotations

import signal
import sys
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
    replica_option,
    say,
    to_jsonable,
)


@click.command()
@replica_option(required=True)
@data_dir_option()
@click.option("--app-dir", default=".", show_default=True, help="Put on sys.path to import the agents' code.")
@click.option("--capacity", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="At most this many agents owned at once.")
@click.option("--node-id", default=None, help="Default: the host name and a random suffix.")
@click.option("--lease-ttl", default=30.0, show_default=True, type=float, help="This node's lease, seconds.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--agents-per-worker", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--llm-durability", type=click.Choice(["local", "replicated"]), default=None,
              help="LLM steps return once recorded locally (default) or once the replica holds them.")
@allow_target_option
@json_option
def node(replica: str, data_dir: str, app_dir: str, capacity: int, node_id: str | None, lease_ttl: float,
         concurrency: int, agents_per_worker: int, llm_durability: str | None, allow_targets: tuple[str, ...]) -> None:
    """Run a node until stopped: claim queued and orphaned agents of the prefix, run them, renew its lease.

    SIGTERM (or `agentshards drain NODE`) drains it: workers finish or stop, every agent whose replica is
    confirmed complete is handed back for another node to claim at once, then it exits 0.
    """
    from .._base.config import RunConfig, SupervisorConfig
    from .._fleet.node import Node

    config = SupervisorConfig(agents_per_worker=agents_per_worker, concurrency=concurrency)
    run_config = RunConfig(llm_durability=llm_durability) if llm_durability else None  # type: ignore[arg-type]
    worker = guarded(lambda: Node(data_dir, replica, capacity=capacity, node_id=node_id, app_dir=app_dir,
                                  allow_targets=allow_targets, lease_ttl_s=lease_ttl, config=config,
                                  run_config=run_config))

    def stop(signum: int, frame: object) -> None:
        worker.stop(f"signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        results: dict[str, Any] = dict(guarded(worker.run))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say(f"node {worker.node_id}: stopped ({worker.stopped_by}); {len(worker.claimed)} agents claimed")
    if worker.stopped_by and worker.stopped_by.startswith("signal SIGINT"):
        sys.exit(INTERRUPTED)
    finish_batch(results, lambda agent_id, value: f"{agent_id}: ok", "agents ended on this node")


@click.command()
@click.argument("target")
@click.option("--inputs", "inputs_file", required=True, type=click.Path(dir_okay=False),
              help='JSONL, one agent per line: {"agent_id": "...", "inputs": {...}}.')
@replica_option(required=True)
@json_option
def submit(target: str, inputs_file: str, replica: str) -> None:
    """Queue TARGET (module:function) agents in the replica prefix for nodes to claim."""
    from .._fleet.fleet import read_agents_file
    from .._fleet.node import submit as submit_agents

    agents = guarded(lambda: read_agents_file(inputs_file))
    results = guarded(lambda: submit_agents(target, agents, replica))
    finish_batch(results, lambda agent_id, state: f"{agent_id}: {state}", "agents queued")


@click.command()
@replica_option(required=True)
@json_option
def nodes(replica: str) -> None:
    """List the nodes of a prefix: id, host, last renewal, agents owned, expired or draining."""
    from .._fleet.node_list import node_table

    rows = guarded(lambda: node_table(replica))

    def text() -> None:
        if not rows:
            click.echo("no nodes")
        for row in rows:
            state = "expired" if row["expired"] else "draining" if row["draining"] else "live"
            click.echo(f"{row['node_id']:<32} {state:<9} agents={row['agents']:<5} host={row['host'] or '-'}")

    emit(to_jsonable(rows), text)


@click.command()
@click.argument("node_id")
@replica_option(required=True)
@json_option
def drain(node_id: str, replica: str) -> None:
    """Ask NODE_ID to hand its agents back and stop (it acts on it at its next scan)."""
    from .._fleet.node_list import drain_node

    guarded(lambda: drain_node(replica, node_id))
    emit({"node_id": node_id, "drain_requested": True},
         lambda: click.echo(f"asked node {node_id} to drain; `agentshards nodes` shows when it is gone"))


COMMANDS = [node, submit, nodes, drain]
