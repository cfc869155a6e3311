"""Every error agentshards raises, under one root.

The tree is deliberately shallow so callers can catch at the level they care about::

    AgentShardsError                 anything agentshards raised on purpose
    ├── InvalidAgentId               an id that cannot be a file name / S3 key
    ├── InvalidStepName              a step name we refuse to journal
    ├── InvalidTarget                agent function not importable as module:function
    ├── InvalidInputs                inputs not JSON-able or not accepted by the function
    ├── ShardError                   the agent's SQLite file cannot be used as a shard
    │   └── ShardExists              a restore or fetch would replace a local shard
    ├── RunMismatch                  re-run with another target/inputs than the open run
    ├── AgentFailed                  the run finished with an error (recorded in the journal)
    ├── ConcurrentStepError          unnamed steps started concurrently (threads, asyncio tasks)
    ├── ResultNotStorable            a step or agent result that is not JSON-able
    ├── NonDeterminismError          a replayed step is called with other inputs than recorded
    ├── InFlightStepError            an LLM call was in flight at a crash and the policy is "fail"
    ├── StepTimeout                  a step ran past its wall-clock timeout (retries included)
    ├── BudgetExceeded               the agent's recorded LLM spend reached its budget (final state)
    ├── InvalidReplica               a replica URL/settings that cannot be used or reached
    ├── ReplicationError             Litestream could not start, sync or restore; a manifest write failed
    │   ├── NoReplica                the agent's replica prefix holds no object at all
    │   └── ReplicaNotRestorable     it holds objects, and neither reader can restore them
    ├── DataDirLocked                another process owns the data dir (a fleet, run_agent with a replica)
    │   └── AgentLocked              another process is running (or changing) this agent
    ├── LeaseError                   this node lost its lease, or another node owns what it asked for
    │   ├── AgentOwned               a live node owns the agent (names it; ``node`` attribute)
    │   ├── OwnershipLost            another node claimed an agent this node was running
    │   └── Fenced                   a fleet worker reached its supervisor's lease deadline: it writes nothing more
    ├── Draining                     a stopping fleet worker sends no new LLM request (the run stays open)
    └── LLMError                     a durable LLM call could not be made (config, not durable)
        └── LLMRequestRejected       the provider rejected the request itself (400/422): a recorded outcome

Every message names the agent (and step when there is one) and ends with a hint, because the
person reading it is usually looking at a log line from one agent among thousands.
"""

from __future__ import annotations


class AgentShardsError(Exception):
    """Root of all agentshards errors; ``hint`` says what to do about it."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        agent_id: str | None = None,
        step: str | None = None,
    ) -> None:
        self.message = message
        self.hint = hint
        self.agent_id = agent_id
        self.step = step
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.agent_id is not None:
            where.append(f"agent {self.agent_id!r}")
        if self.step is not None:
            where.append(f"step {self.step!r}")
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class InvalidAgentId(AgentShardsError, ValueError):
    """The id would be unsafe or surprising as a file name or an S3 key."""


class InvalidStepName(AgentShardsError, ValueError):
    """The step name is empty, too long, reserved or uses the '#' occurrence marker."""


class InvalidTarget(AgentShardsError, ValueError):
    """The agent function cannot be recorded as an importable ``module:function``."""


class InvalidInputs(AgentShardsError, ValueError):
    """Agent inputs that cannot be journaled or that the agent function does not accept."""


class ShardError(AgentShardsError):
    """The file at an agent's path cannot be used as that agent's shard."""


class ShardExists(ShardError):
    """A local shard is already where a restore or fetch would put one; nothing was overwritten.

    A type of its own because recovery treats it as "use the local shard", not as a failure."""


class RunMismatch(AgentShardsError):
    """The agent already has a run with a different target or different inputs."""


class AgentFailed(AgentShardsError):
    """The agent's run ended with an exception; its type and message are in the journal."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        error_message: str,
        hint: str | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(message, hint=hint, agent_id=agent_id)


class ConcurrentStepError(AgentShardsError):
    """A step without an explicit unique name started while a step of another thread or task was running."""


class ResultNotStorable(AgentShardsError, TypeError):
    """A result that cannot be stored as strict JSON (and so could not be replayed identically)."""


class LLMError(AgentShardsError):
    """A durable LLM call that cannot be made: missing configuration or a call that is not durable."""


class NonDeterminismError(AgentShardsError):
    """On replay, a step was called with inputs whose hash differs from the recorded one."""


class InFlightStepError(AgentShardsError):
    """An LLM request was sent but not recorded before the agent stopped, and the policy says stop."""


class StepTimeout(AgentShardsError, TimeoutError):
    """The step's wall-clock budget ran out; nothing was recorded, a re-run tries it again."""


class LLMRequestRejected(LLMError):
    """The provider answered 400/422: the request is invalid. Recorded as the step's outcome, so a replay
    raises the same error instead of paying for the same rejection again."""

    def __init__(self, message: str, *, status: int, code: str | None, agent_id: str | None = None,
                 step: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message, agent_id=agent_id, step=step,
                         hint="fix the request (model parameters, messages); start a new run or fork before it")


class InvalidReplica(AgentShardsError, ValueError):
    """A replica URL that cannot be used, or a replica that cannot be reached with the given settings."""


class ReplicationError(AgentShardsError):
    """Litestream failed to start, to confirm a sync in time, or to restore a file."""


class NoReplica(ReplicationError):
    """Nothing at all is stored under the agent's replica prefix (killed before Litestream's first upload).

    The one restore outcome after which starting the agent over from its inputs loses nothing: a prefix
    holding anything, even objects no reader here understands, is never taken for an empty one.
    """


class ReplicaNotRestorable(ReplicationError):
    """The agent's replica holds objects, but neither the in-process LTX reader nor ``litestream restore``
    could bring back its newest state from them. The objects are left as they are: the agent must not be
    started over (its paid-for steps are in there) nor restored from an older state."""


class BudgetExceeded(AgentShardsError):
    """The agent's recorded LLM spend reached its budget; the run ended as ``budget_exceeded`` (final)."""


class DataDirLocked(AgentShardsError):
    """Another process owns this data dir: a fleet's supervisor or a run_agent with a replica. ``pid`` is the
    holder's (also in the message), None when its lock file did not say."""

    def __init__(self, message: str, *, pid: int | None = None, hint: str | None = None,
                 agent_id: str | None = None) -> None:
        self.pid = pid
        super().__init__(message, hint=hint, agent_id=agent_id)


class AgentLocked(DataDirLocked):
    """Another process holds this agent: a run of it is under way there (or a command is changing its shard).
    A DataDirLocked of one agent, so code that waits for a data dir's owner handles it the same way."""


class LeaseError(AgentShardsError):
    """This node lost (or could not renew) its lease, or another node owns what it asked for."""


class AgentOwned(LeaseError):
    """A node whose lease is live owns the agent: a second writer is refused. ``node`` names it."""

    def __init__(self, message: str, *, node: str | None = None, hint: str | None = None,
                 agent_id: str | None = None) -> None:
        self.node = node
        super().__init__(message, hint=hint, agent_id=agent_id)


class OwnershipLost(LeaseError):
    """Another node claimed an agent this node was running (its record moved to a newer generation): this
    node stops that agent and writes nothing more for it."""


class Draining(AgentShardsError):
    """The worker is stopping (its node drains, SIGTERM): it sends no new LLM request and starts no new step.
    Not an outcome of the agent: what is in flight is recorded, the run stays open and resumes wherever it runs
    next."""


class Fenced(LeaseError):
    """A fleet worker reached its supervisor's lease deadline before a write or an LLM request.

    Not an outcome of the agent: nothing is recorded (neither the step nor the run's end), the worker exits
    without a result file, as if killed, and the agent resumes from its journal wherever it runs next. A type
    of its own so a worker can tell it from every error an agent may end with."""
