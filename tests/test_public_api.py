"""The public surface is pinned: adding or removing a name is a deliberate, reviewed change."""

from __future__ import annotations

import json
import subprocess
import sys

import agentshards

PUBLIC = {
    "Agent", "AgentFailed", "AgentReport", "AgentShardsError", "ConcurrentStepError", "FakeLLMServer",
    "InvalidAgentId", "InvalidInputs", "InvalidStepName", "InvalidTarget", "LLMConfig", "LLMError",
    "ResultNotStorable", "RunConfig", "RunMismatch", "RunReport", "ShardConfig", "ShardError", "StepOptions",
    "__version__", "inspect_agent", "run_agent", "validate_agent_id",
    "InFlightStepError", "LLMRequestRejected", "NonDeterminismError", "StepTimeout", "fork_run",
    "InvalidReplica", "ReplicationError", "LitestreamConfig", "ManifestEntry", "list_fleet", "restore_agent",
    "restore_agents", "BudgetExceeded", "ModelPrice", "Spend", "SpendReport", "spend_report",
    "Fleet", "DataDirLocked", "SupervisorConfig", "ArchiveEntry", "archive_agent", "delete_agent",
    "expire_archives", "fetch_archive", "list_archives", "LeaseError", "recover",
    "cancel_agent", "retry_agent", "query_fleet", "QueryResult",
    "AgentLocked", "ShardExists", "NoReplica", "ReplicaNotRestorable", "AgentOwned", "OwnershipLost", "Node", "submit",
    "AsyncAgent", "arun_agent", "cancel_in_fleet", "retry_in_fleet", "delete_in_fleet", "RequestOutcome",
}


def test_all_is_pinned_and_resolvable() -> None:
    assert set(agentshards.__all__) == PUBLIC
    for name in agentshards.__all__:
        assert getattr(agentshards, name) is not None


def test_every_error_derives_from_the_root() -> None:
    public = [getattr(agentshards, n) for n in PUBLIC]
    errors = [obj for obj in public if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert len(errors) == 26
    for cls in errors:
        assert issubclass(cls, agentshards.AgentShardsError), cls


def test_import_is_lazy() -> None:
    """Importing agentshards must not pull in openai, tenacity, boto3, click, rich, http.server or subprocess."""
    heavy = "('openai', 'tenacity', 'boto3', 'click', 'rich', 'http.server', 'subprocess')"
    code = f"import sys, json, agentshards; print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
