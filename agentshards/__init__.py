"""agentshards: every AI agent gets its own SQLite file as a durable checkpoint store.

The public surface is what ``__all__`` lists (a test pins it); everything in ``_``-modules is private.
Importing this package stays cheap: ``openai``, ``tenacity``, ``boto3`` load only when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._agent import Agent, StepOptions
from ._config import LLMConfig, RunConfig, ShardConfig
from ._errors import (
    AgentFailed,
    AgentShardsError,
    ConcurrentStepError,
    InFlightStepError,
    InvalidAgentId,
    InvalidInputs,
    InvalidStepName,
    InvalidTarget,
    LLMError,
    LLMRequestRejected,
    NonDeterminismError,
    ResultNotStorable,
    RunMismatch,
    ShardError,
    StepTimeout,
)
from ._report import AgentReport, RunReport, inspect_agent
from ._run import fork_run, run_agent
from ._shard import validate_agent_id

if TYPE_CHECKING:
    from ._fakellm import FakeLLMServer

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentFailed",
    "AgentReport",
    "AgentShardsError",
    "ConcurrentStepError",
    "FakeLLMServer",
    "InFlightStepError",
    "InvalidAgentId",
    "InvalidInputs",
    "InvalidStepName",
    "InvalidTarget",
    "LLMConfig",
    "LLMError",
    "LLMRequestRejected",
    "NonDeterminismError",
    "ResultNotStorable",
    "RunConfig",
    "RunMismatch",
    "RunReport",
    "ShardConfig",
    "ShardError",
    "StepOptions",
    "StepTimeout",
    "__version__",
    "fork_run",
    "inspect_agent",
    "run_agent",
    "validate_agent_id",
]


def __getattr__(name: str) -> Any:
    """``FakeLLMServer`` loads ``http.server`` only when asked for."""
    if name == "FakeLLMServer":
        from ._fakellm import FakeLLMServer

        return FakeLLMServer
    raise AttributeError(f"module 'agentshards' has no attribute {name!r}")
