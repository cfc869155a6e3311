"""agentshards: every AI agent gets its own SQLite file as a durable checkpoint store.

The public surface is what ``__all__`` lists (a test pins it); everything in ``_``-modules is private.
Importing this package stays cheap: ``openai``, ``tenacity``, ``boto3`` load only when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._agent import Agent, StepOptions
from ._config import LitestreamConfig, LLMConfig, RunConfig, ShardConfig, SupervisorConfig
from ._errors import (
    AgentFailed,
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
    ReplicationError,
    ResultNotStorable,
    RunMismatch,
    ShardError,
    StepTimeout,
)
from ._ledger import ModelPrice, Spend
from ._report import AgentReport, RunReport, SpendReport, inspect_agent, spend_report
from ._run import cancel_agent, fork_run, retry_agent, run_agent
from ._shard import validate_agent_id

if TYPE_CHECKING:
    from ._archive import ArchiveEntry, archive_agent, delete_agent, expire_archives, fetch_archive, list_archives
    from ._fakellm import FakeLLMServer
    from ._fleet import Fleet, recover
    from ._manifest import ManifestEntry
    from ._query import QueryResult, query_fleet
    from ._restore import list_fleet, restore_agent, restore_agents

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentFailed",
    "AgentReport",
    "AgentShardsError",
    "ArchiveEntry",
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
    "NonDeterminismError",
    "QueryResult",
    "ReplicationError",
    "ResultNotStorable",
    "RunConfig",
    "RunMismatch",
    "RunReport",
    "ShardConfig",
    "ShardError",
    "Spend",
    "SpendReport",
    "StepOptions",
    "StepTimeout",
    "SupervisorConfig",
    "__version__",
    "archive_agent",
    "cancel_agent",
    "delete_agent",
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
    "run_agent",
    "spend_report",
    "validate_agent_id",
]


_LAZY = {
    "ArchiveEntry": "._archive",
    "archive_agent": "._archive",
    "delete_agent": "._archive",
    "expire_archives": "._archive",
    "fetch_archive": "._archive",
    "list_archives": "._archive",
    "FakeLLMServer": "._fakellm",
    "Fleet": "._fleet",
    "recover": "._fleet",
    "query_fleet": "._query",
    "QueryResult": "._query",
    "ManifestEntry": "._manifest",
    "list_fleet": "._restore",
    "restore_agent": "._restore",
    "restore_agents": "._restore",
}


def __getattr__(name: str) -> Any:
    """Names whose modules pull in http.server, subprocess or boto3 load only when asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'agentshards' has no attribute {name!r}")
