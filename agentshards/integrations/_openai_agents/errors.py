"""The one error the integration adds: an SDK feature whose work would happen outside the journal."""

from __future__ import annotations

from agentshards import AgentShardsError


class NotDurable(AgentShardsError, ValueError):
    """The SDK run asks for something this integration cannot make durable (a session, approvals, a local
    shell/computer/apply-patch tool, a model object or provider of its own, streaming): refused before
    anything runs, so no step of it is half-journaled. ``feature`` names it for code that handles it."""

    def __init__(self, message: str, *, feature: str = "", hint: str | None = None,
                 agent_id: str | None = None, step: str | None = None) -> None:
        self.feature = feature
        super().__init__(message, hint=hint, agent_id=agent_id, step=step)
