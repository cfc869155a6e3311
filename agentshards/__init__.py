"""agentshards: every AI agent gets its own SQLite file as a durable checkpoint store.

The public surface is what ``__all__`` lists (a test pins it); everything in ``_``-modules is private.
Importing this package stays cheap: ``openai``, ``tenacity``, ``boto3`` load only when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base.config import LitestreamConfig, LLMConfig, RunConfig, ShardConfig, SupervisorConfig
from ._base.errors import (
    AgentFailed,
    AgentLocked,
    AgentOwned,
    AgentShardsError,
    BudgetExceeded,
    ConcurrentStepError,
    DataDirLocked,
    InFlightStepError,
    InvalidAgentId,
    InvalidInputs,
    InvalidReplica,
    InvalidStepName,
    InvalidTarget,
    LeaseError,
    LLMError,
    LLMRequestRejected,
    NonDeterminismError,
    NoReplica,
    OwnershipLost,
    ReplicaNotRestorable,
    ReplicationError,
    ResultNotStorable,
    RunMismatch,
    ShardError,
    ShardExists,
    StepTimeout,
)
from ._base.prices import ModelPrice
from ._core.agent import Agent, StepOptions
from ._core.ledger import Spend
from ._core.shard import validate_agent_id
from ._fleet.report import AgentReport, RunReport, SpendReport, inspect_agent, spend_report
from ._fleet.run import arun_agent, cancel_agent, fork_run, retry_agent, run_agent

if TYPE_CHECKING:
    from ._core.async_agent import AsyncAgent
    from ._fleet.fleet import Fleet, recover
    from ._fleet.node import Node, submit
    from ._fleet.query import QueryResult, query_fleet
    from ._fleet.requests import RequestOutcome, cancel_in_fleet, delete_in_fleet, retry_in_fleet
    from ._replication.archive import (
        ArchiveEntry,
        archive_agent,
        delete_agent,
        expire_archives,
        fetch_archive,
        list_archives,
    )
    from ._replication.manifest import ManifestEntry
    from ._replication.restore import list_fleet, restore_agent, restore_agents
    from .testing._fakellm import FakeLLMServer

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentFailed",
    "AgentLocked",
    "AgentOwned",
    "AgentReport",
    "AgentShardsError",
    "ArchiveEntry",
    "AsyncAgent",
    "BudgetExceeded",
    "ConcurrentStepError",
    "DataDirLocked",
    "FakeLLMServer",
    "Fleet",
    "InFlightStepError",
    "InvalidAgentId",
    "InvalidInputs",
    "InvalidReplica",
    "InvalidStepName",
    "InvalidTarget",
    "LLMConfig",
    "LLMError",
    "LLMRequestRejected",
    "LeaseError",
    "LitestreamConfig",
    "ManifestEntry",
    "ModelPrice",
    "NoReplica",
    "Node",
    "NonDeterminismError",
    "OwnershipLost",
    "QueryResult",
    "ReplicaNotRestorable",
    "ReplicationError",
    "RequestOutcome",
    "ResultNotStorable",
    "RunConfig",
    "RunMismatch",
    "RunReport",
    "ShardConfig",
    "ShardError",
    "ShardExists",
    "Spend",
    "SpendReport",
    "StepOptions",
    "StepTimeout",
    "SupervisorConfig",
    "__version__",
    "archive_agent",
    "arun_agent",
    "cancel_agent",
    "cancel_in_fleet",
    "delete_agent",
    "delete_in_fleet",
    "expire_archives",
    "fetch_archive",
    "fork_run",
    "inspect_agent",
    "list_archives",
    "list_fleet",
    "query_fleet",
    "recover",
    "restore_agent",
    "restore_agents",
    "retry_agent",
    "retry_in_fleet",
    "run_agent",
    "spend_report",
    "submit",
    "validate_agent_id",
]


_LAZY = {
    "AsyncAgent": "._core.async_agent",
    "ArchiveEntry": "._replication.archive",
    "archive_agent": "._replication.archive",
    "delete_agent": "._replication.archive",
    "expire_archives": "._replication.archive",
    "fetch_archive": "._replication.archive",
    "list_archives": "._replication.archive",
    "FakeLLMServer": ".testing._fakellm",
    "Fleet": "._fleet.fleet",
    "recover": "._fleet.fleet",
    "Node": "._fleet.node",
    "submit": "._fleet.node",
    "query_fleet": "._fleet.query",
    "QueryResult": "._fleet.query",
    "RequestOutcome": "._fleet.requests",
    "cancel_in_fleet": "._fleet.requests",
    "retry_in_fleet": "._fleet.requests",
    "delete_in_fleet": "._fleet.requests",
    "ManifestEntry": "._replication.manifest",
    "list_fleet": "._replication.restore",
    "restore_agent": "._replication.restore",
    "restore_agents": "._replication.restore",
}


def __getattr__(name: str) -> Any:
    """Names whose modules pull in http.server, subprocess (asyncio does) or boto3 load only when asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'agentshards' has no attribute {name!r}")
