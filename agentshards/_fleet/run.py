"""``run_agent``: run one agent in this process, resuming its open run or reporting its finished one."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base.config import RunConfig, ShardConfig, litestream_owned, llm_config_from_env
from .._base.errors import (
    AgentFailed,
    AgentShardsError,
    BudgetExceeded,
    Draining,
    InvalidInputs,
    InvalidTarget,
    LLMRequestRejected,
    ShardError,
)
from .._core import codec as _codec
from .._core import fence as _fence
from .._core.agent import Agent
from .._core.journal import BUDGET_EXCEEDED, CANCELLED, FAILED, RUNNING, SUCCEEDED, Journal, Run
from .._core.locks import lock_agent, lock_data_dir
from .._core.shard import open_shard, validate_agent_id
from .._core.sqlite import require_sqlite
from .._core.steps import StepBook
from .._core.target import AgentFn, is_async, target_of
from .._core.target_policy import TargetPolicy, resolve_stored

if TYPE_CHECKING:  # replication modules load only when a replica is used: `import agentshards` stays fast
    from .._replication.objectstore import ObjectStore
    from .._replication.replica import ReplicaTarget
    from .._replication.replication import Replication
    from .claims import Claims

log = logging.getLogger("agentshards")

RESERVED_INPUTS = frozenset({"agent_id", "data_dir", "new_run", "config", "replica"})
CRASH_ENV = "AGENTSHARDS_TEST_CRASH"


def run_agent(
    fn: AgentFn | str,
    *,
    agent_id: str,
    data_dir: str | os.PathLike[str],
    new_run: bool = False,
    config: RunConfig | None = None,
    replica: str | None = None,
    **inputs: Any,
) -> Any:
    """Run ``fn(agent, **inputs)`` durably as agent ``agent_id`` with its shard in ``data_dir``.

    - No run yet: start one. An open run with the same target and inputs: resume it, replaying every
      completed step from the journal. A finished run: return its recorded result (or raise
      AgentFailed with its recorded error) without executing anything.
    - Another target or other inputs: RunMismatch, unless ``new_run=True`` starts a fresh run.
    - ``config`` defaults to FULL sync and the OpenAI settings in ``OPENAI_API_KEY``/``OPENAI_BASE_URL``
      (read here, at the edge, and nowhere else).
    - ``replica`` (``s3://bucket/prefix`` or a directory) replicates the shard with a Litestream process
      for the duration of the call, publishes the agent's manifest, and enables ``replicated`` steps.
      S3 endpoint, region and credentials come from the standard AWS environment. The call then owns the
      data dir as a fleet does (DataDirLocked while another owner has it) and the replica prefix's lease.
    - One run of an agent at a time: AgentLocked (naming the holder's pid) while another process or
      thread runs it.
    - An ``async def`` agent gets an :class:`~agentshards.AsyncAgent` and runs on an event loop of its
      own (``asyncio.run``); inside a running loop, ``await arun_agent(...)`` instead.

    Everything is validated before the disk is touched. The result is the JSON value the journal holds.
    """
    prepared = _prepare(fn, agent_id, config, replica, inputs)
    if is_async(prepared.func):
        import asyncio  # here, not at the top: asyncio imports subprocess, and `import agentshards` stays light

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_own_loop(prepared, data_dir, new_run, replica))
        raise InvalidTarget(f"{prepared.target} is an async agent and run_agent was called inside a running event"
                            " loop, which cannot start another", agent_id=prepared.agent_id,
                            hint="use `await agentshards.arun_agent(...)` (same arguments) inside async code")
    with _opened(prepared, data_dir, replica) as opened:
        return _execute(opened, prepared.func, prepared.target, prepared.input_json, new_run, prepared.config)


async def arun_agent(
    fn: AgentFn | str,
    *,
    agent_id: str,
    data_dir: str | os.PathLike[str],
    new_run: bool = False,
    config: RunConfig | None = None,
    replica: str | None = None,
    **inputs: Any,
) -> Any:
    """``run_agent`` for async code: run an ``async def`` agent on the running event loop, no second loop.

    Same arguments, guarantees and errors as :func:`run_agent`. The blocking parts (validation, locks,
    opening the shard, starting and ending the run, a replica's Litestream and lease) run in worker
    threads, so many agents share one loop. A plain ``def`` agent runs in a worker thread
    (``asyncio.to_thread(run_agent, ...)``).
    """
    import asyncio

    prepared = await asyncio.to_thread(_prepare, fn, agent_id, config, replica, inputs)
    if not is_async(prepared.func):
        return await asyncio.to_thread(run_agent, fn, agent_id=agent_id, data_dir=data_dir, new_run=new_run,
                                       config=prepared.config, replica=replica, **inputs)
    return await _arun(prepared, data_dir, new_run, replica)


@dataclass(frozen=True)
class _Prepared:
    """A run_agent call checked before the disk is touched."""

    agent_id: str
    target: str
    func: AgentFn
    input_json: str
    config: RunConfig
    checked: tuple[ReplicaTarget, ObjectStore] | None


def _prepare(fn: AgentFn | str, agent_id: str, config: RunConfig | None, replica: str | None,
             inputs: dict[str, Any]) -> _Prepared:
    agent_id = validate_agent_id(agent_id)
    target, func = target_of(fn)
    input_json = _check_inputs(func, target, agent_id, inputs)
    env = os.environ
    if config is None:
        config = config_from_env(env)
    require_sqlite()  # these two checks come before the locks, which create the data dir and their files
    checked = None if replica is None else check_replica(replica, env)
    if checked is not None:  # the lease below fences with conditional writes: refused before any file is made
        from .._replication.lease import probe_conditional_writes

        probe_conditional_writes(checked[1], checked[0])
    return _Prepared(agent_id, target, func, input_json, config, checked)


@dataclass(frozen=True)
class _Opened:
    """What one run holds while it runs: its journal and, with a replica, Litestream and this node's claims."""

    journal: Journal
    replication: Replication | None
    claims: Claims | None


@contextlib.contextmanager
def _opened(prepared: _Prepared, data_dir: str | os.PathLike[str], replica: str | None) -> Iterator[_Opened]:
    """Locks, this node's lease and claim of the agent, Litestream and the open journal for one run; all
    released on the way out (the agent handed back when its replica holds all of it). A lease lost during the
    run is raised at the end: the result is in the journal, the replica may lack it."""
    agent_id, config, checked, env = prepared.agent_id, prepared.config, prepared.checked, os.environ
    with contextlib.ExitStack() as stack:
        replication = claims = None
        if replica is not None:  # this call runs the data dir's Litestream: it must own the data dir
            stack.enter_context(lock_data_dir(data_dir, f"run agent {agent_id} with a replica", agent_id=agent_id))
        stack.enter_context(lock_agent(data_dir, agent_id))  # one run of an agent at a time
        if replica is not None and checked is not None:
            from .claims import Claims

            config = litestream_owned(config)
            # this call is a node of one agent: its own lease, then a claim of the agent (docs/ownership.md)
            claims = Claims.open(Path(data_dir), *checked, ttl_s=config.lease_ttl_s, take_over=config.lease_take_over)
            stack.callback(claims.release)
            before, _ = claims.claim(agent_id, {
                "status": RUNNING, "target": prepared.target, "input_digest": _codec.digest(prepared.input_json),
                "run_id": "", "steps": 0, "code_fingerprint": code_fingerprint(prepared.func),
                "updated_at": time.time(), "inputs_json": prepared.input_json})
            claims.bring_up(Path(data_dir), agent_id, before, checked[0], checked[1], config.litestream, env,
                            agent_locked=True)
            replication = start_replication(Path(data_dir), replica, config, env, checked=checked)
            stack.callback(replication.litestream.stop)
            claims.keeper.add_fence(replication.halt)
        journal = Journal(open_shard(Path(data_dir), agent_id, config.shard), agent_id)
        stack.callback(journal.close)
        if replication is not None and claims is not None:
            stack.callback(_hand_back, claims, replication, agent_id)
            claims.go_live(agent_id, replication)
        try:
            yield _Opened(journal, replication, claims)
        except AgentShardsError as exc:
            if claims is not None and claims.keeper.lost is not None:  # fenced: that is the cause to report
                raise claims.keeper.lost from exc
            raise
        if claims is not None and claims.keeper.lost is not None:
            raise claims.keeper.lost


async def _own_loop(prepared: _Prepared, data_dir: str | os.PathLike[str], new_run: bool,
                    replica: str | None) -> Any:
    """An async agent under run_agent, on the loop asyncio.run made for it: its LLM clients close with it."""
    try:
        return await _arun(prepared, data_dir, new_run, replica)
    finally:
        if "agentshards._core.async_clients" in sys.modules:
            from .._core.async_clients import close_clients

            await close_clients()


async def _arun(prepared: _Prepared, data_dir: str | os.PathLike[str], new_run: bool, replica: str | None) -> Any:
    """Open the run's resources in a worker thread, run the agent on this loop, release them in a thread.

    A cancellation while they are being opened still releases them once opened (a lock must not leak).
    """
    import asyncio

    opening = _opened(prepared, data_dir, replica)
    entering = asyncio.ensure_future(asyncio.to_thread(opening.__enter__))
    try:
        opened = await asyncio.shield(entering)
    except asyncio.CancelledError:
        entering.add_done_callback(lambda f: None if f.cancelled() or f.exception() else opening.__exit__(
            None, None, None))
        raise
    try:
        result = await _aexecute(opened, prepared.func, prepared.target, prepared.input_json, new_run,
                                 prepared.config)
    except BaseException as exc:
        if not await asyncio.to_thread(opening.__exit__, type(exc), exc, exc.__traceback__):
            raise
        raise AssertionError("unreachable") from exc  # pragma: no cover - ExitStack does not swallow exceptions
    await asyncio.to_thread(opening.__exit__, None, None, None)
    return result


def config_from_env(env: Mapping[str, str], shard: ShardConfig | None = None) -> RunConfig:
    """The default RunConfig of a process's edge (run_agent, a fleet worker): OpenAI settings and the
    test-only crash plan from ``env``, the given shard settings."""
    return RunConfig(shard=shard or ShardConfig(), llm=llm_config_from_env(env), crash_plan=env.get(CRASH_ENV))


def check_replica(replica: str, env: Mapping[str, str]) -> tuple[ReplicaTarget, ObjectStore]:
    """Parse the replica and check it is usable: clear errors before any agent starts or any file is made."""
    from .._replication.objectstore import store_for
    from .._replication.replica import parse_replica

    target = parse_replica(replica, env)
    store = store_for(target, env)
    store.check()
    return target, store


def _hand_back(claims: Claims, replication: Replication, agent_id: str) -> None:
    """At the end of the call: release an agent still owned (its run is open) once the replica holds all of
    it, so any node may take it at once; unconfirmed, it stays owned until this node's lease is gone."""
    if replication.halted is not None or not claims.ownership.holds(agent_id):
        return
    try:
        if replication.sync_final(agent_id):
            claims.ownership.release(agent_id)
    except Exception as exc:  # the call's own outcome matters more; its lease ends right after
        log.warning("agent %s: not handed back: %s", agent_id, exc)


def start_replication(data_dir: Path, replica: str, config: RunConfig, env: Mapping[str, str], *,
                      checked: tuple[ReplicaTarget, ObjectStore] | None = None) -> Replication:
    """Check the replica is usable (unless ``checked`` by ``check_replica`` already), then start Litestream."""
    from .._replication.litestream import Litestream
    from .._replication.replication import Replication

    target, store = checked or check_replica(replica, env)
    litestream = Litestream(data_dir, target, config.litestream, env)
    litestream.start()
    return Replication(litestream, store, target)


def _confirm_of(replication: Replication | None) -> Callable[[str, float], None] | None:
    """Who confirms ``replicated`` steps: this call's Litestream, or in a fleet worker its supervisor."""
    if replication is not None:
        return replication.confirm
    from .confirm import supervisor_confirm  # sockets and threads: only where a step is confirmed

    return supervisor_confirm.get()


def _execute(opened: _Opened, func: AgentFn, target: str, input_json: str, new_run: bool, config: RunConfig) -> Any:
    journal = opened.journal
    run, publish = _start(opened, func, target, input_json, new_run)
    if run.status == SUCCEEDED:
        return _codec.loads(run.output_json or "null")
    agent = Agent(journal, run.id, config, _confirm_of(opened.replication), run.executions)
    try:
        result = func(agent, **_codec.loads(input_json))
        agent._finish_open_steps()  # a stream the agent stopped reading: its rest is read and recorded
    except Exception as exc:
        agent.end()
        failure = _ended_with(journal, publish, run, agent, exc)
        if failure is None:
            raise
        raise failure from exc
    agent.end()
    return _succeeded(journal, publish, run, agent, result)


async def _aexecute(opened: _Opened, func: AgentFn, target: str, input_json: str, new_run: bool,
                    config: RunConfig) -> Any:
    """``_execute`` for an async agent: the same run bookkeeping, its blocking parts in worker threads."""
    import asyncio

    from .._core.async_agent import AsyncAgent

    journal = opened.journal
    run, publish = await asyncio.to_thread(_start, opened, func, target, input_json, new_run)
    if run.status == SUCCEEDED:
        return _codec.loads(run.output_json or "null")
    confirm = _confirm_of(opened.replication)
    agent = await asyncio.to_thread(AsyncAgent, journal, run.id, config, confirm, run.executions)
    try:
        result = await func(agent, **_codec.loads(input_json))
        await agent._finish_open_steps()  # a stream the agent stopped reading: its rest is read and recorded
    except Exception as exc:
        agent.end()
        failure = await asyncio.to_thread(_ended_with, journal, publish, run, agent, exc)
        if failure is None:
            raise
        raise failure from exc
    agent.end()
    return await asyncio.to_thread(_succeeded, journal, publish, run, agent, result)


def _start(opened: _Opened, func: AgentFn, target: str, input_json: str,
           new_run: bool) -> tuple[Run, Callable[[Run], None]]:
    """Begin or resume the run and publish it; a run that ended in failure raises its recorded error."""
    journal = opened.journal
    run = journal.begin_run(target, input_json, _codec.digest(input_json), new_run=new_run)
    publish = _publisher(journal, opened.replication, opened.claims, target, func)
    publish(run)
    if run.status in (FAILED, BUDGET_EXCEEDED, CANCELLED):
        raise _failure(journal.agent_id, run.error_json, run.status)
    return run, publish


def _ended_with(journal: Journal, publish: Callable[[Run], None], run: Run, agent: StepBook,
                exc: Exception) -> AgentShardsError | None:
    """Record how the agent's exception ends the run; return the error to raise from it (None: raise ``exc``
    itself, the run ended as budget_exceeded or stays open)."""
    agent.flush_ledger()
    if _fence.refused(journal.agent_id):  # its code caught the drain's refusal: the run stays open all the same
        return _drain_refusal(journal.agent_id)
    if isinstance(exc, BudgetExceeded):
        publish(journal.finish_run(run.id, BUDGET_EXCEEDED, error_json=json.dumps(
            {"type": "agentshards.BudgetExceeded", "message": exc.message})))
        return None
    if _leaves_run_open(exc):
        return None
    error = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)[:4000],
             "traceback": "".join(traceback.format_exception(exc))[-8000:]}
    run = journal.finish_run(run.id, FAILED, error_json=json.dumps(error))
    publish(run)
    return _failure(journal.agent_id, run.error_json)


def _drain_refusal(agent_id: str) -> Draining:
    return Draining("its worker is stopping and refused it a step or an LLM call, so this run does not end here",
                    agent_id=agent_id, hint="the run stays open and resumes from its last recorded step wherever "
                                            "it runs next")


def _succeeded(journal: Journal, publish: Callable[[Run], None], run: Run, agent: StepBook, result: Any) -> Any:
    agent.flush_ledger()
    if _fence.refused(journal.agent_id):  # a result computed around a refused step or call is not its result
        raise _drain_refusal(journal.agent_id)
    output = _codec.dumps(result, agent_id=journal.agent_id, step=None, what="agent result")
    run = journal.finish_run(run.id, SUCCEEDED, output_json=output)
    publish(run)
    if run.status == FAILED:
        raise _failure(journal.agent_id, run.error_json)
    return _codec.loads(run.output_json or "null")


def _publisher(journal: Journal, replication: Replication | None, claims: Claims | None, target: str,
               func: AgentFn) -> Callable[[Run], None]:
    """Write the agent's manifest entry (conditionally, as its owner); no-op without a replica. An ending is
    published only once a final sync confirms the replica holds it, else as ``unsynced`` (see
    ``_replication.states``); a confirmed ending hands the agent back. A failed write raises
    ReplicationError (an agent the manifest does not list is one a fresh node cannot recover), a claim by
    another node OwnershipLost."""
    if replication is None or claims is None:
        return lambda run: None
    from .._replication.states import ENDED, UNSYNCED, published

    fingerprint = code_fingerprint(func)

    def publish(run: Run) -> None:
        assert replication is not None and claims is not None
        synced = run.status in ENDED and replication.sync_final(journal.agent_id)
        status = published(run.status, synced=synced)
        if status == UNSYNCED:
            log.warning("agent %s: its run ended (%s) but the replica was not confirmed to hold the end; "
                        "published as %s, so a recovery takes it", journal.agent_id, run.status, UNSYNCED)
        fields = {"status": status, "target": target, "input_digest": run.input_digest, "run_id": run.id,
                  "code_fingerprint": fingerprint, "steps": len(journal.steps(run.id)), "inputs_json": run.input_json}
        write = claims.ownership.release if synced else claims.ownership.update
        replication.publish_with(journal.agent_id, status, lambda: write(journal.agent_id, **fields))

    return publish


def code_fingerprint(func: AgentFn) -> str | None:
    """sha256 of the agent function's module source: tells a resumed agent that its code changed."""
    try:
        source = inspect.getsourcefile(func)
        return None if source is None else hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):
        return None


def _check_inputs(func: AgentFn, target: str, agent_id: str, inputs: dict[str, Any]) -> str:
    """Inputs must be JSON (they are journaled and compared on resume) and fit the function's signature."""
    try:
        text = _codec.canonical(inputs)
    except (TypeError, ValueError) as exc:
        raise InvalidInputs(f"inputs for {target} are not JSON-able: {exc}", agent_id=agent_id,
                            hint="pass str/int/float/bool/None/list/dict inputs") from exc
    if len(text) > _codec.MAX_VALUE_CHARS:
        raise InvalidInputs(f"inputs for {target} are {len(text):,} characters as JSON, over the "
                            f"{_codec.MAX_VALUE_CHARS:,} limit", agent_id=agent_id,
                            hint="pass a reference (a path, an object key) instead of the data itself")
    try:
        inspect.signature(func).bind(None, **inputs)
    except TypeError as exc:
        raise InvalidInputs(f"{target} does not accept these inputs: {exc}", agent_id=agent_id,
                            hint=f"the function is called as fn(agent, **inputs); {sorted(RESERVED_INPUTS)}"
                                 " are run_agent's own arguments") from exc
    except ValueError:
        pass  # builtins without a signature: let the call itself complain
    return text


def _leaves_run_open(exc: Exception) -> bool:
    """Errors of the environment or of our API usage do not end the run: fix the cause and re-run.

    Only the agent's own exceptions (and LLM requests the provider rejects as invalid) are outcomes.
    """
    if isinstance(exc, LLMRequestRejected):
        return False
    if isinstance(exc, AgentShardsError):
        return True
    openai = sys.modules.get("openai")
    if openai is None:
        return False
    return isinstance(exc, openai.APIError) and not isinstance(
        exc, (openai.BadRequestError, openai.UnprocessableEntityError))


def _failure(agent_id: str, error_json: str | None, status: str = FAILED) -> AgentShardsError:
    error = json.loads(error_json or "{}")
    if status == BUDGET_EXCEEDED:
        return BudgetExceeded(f"its run ended over budget: {error.get('message', '')}", agent_id=agent_id,
                              hint="budget_exceeded is final; raise RunConfig(budget_usd=...) and pass new_run=True")
    etype, emsg = str(error.get("type", "?")), str(error.get("message", ""))
    if status == CANCELLED:
        return AgentFailed(f"its run was cancelled: {emsg}", error_type="Cancelled", error_message=emsg,
                           agent_id=agent_id, hint="cancelled is final; pass new_run=True to run it again")
    return AgentFailed(f"its run failed with {etype}: {emsg[:500]}", error_type=etype, error_message=emsg,
                       agent_id=agent_id, hint="the failure is recorded; pass new_run=True to run it again")


def fork_run(agent_id: str, data_dir: str | os.PathLike[str], *, at_step: int | str,
             inputs: dict[str, Any] | None = None, app_dir: str | os.PathLike[str] | None = None,
             allow_targets: Sequence[str] = ()) -> str:
    """Start a new run of the agent that keeps the steps completed before ``at_step``; return its id.

    ``at_step`` is the 1-based position (in completion order) or the name of the first step to run
    afresh. The way out of a NonDeterminismError that keeps what is still valid: steps before the fork
    point replay, later ones run again. ``inputs`` replaces the run's inputs (default: unchanged); run
    the agent again with those inputs to continue. The previous run stays in the journal. Checking new
    inputs imports the stored target, under the same policy as ``retry_agent`` (``app_dir``,
    ``allow_targets``).
    """
    with _offline_journal(agent_id, data_dir, "fork") as journal:
        runs = journal.runs()
        if not runs:
            raise ShardError("has no run to fork", agent_id=agent_id, hint="run the agent first")
        source = runs[-1]
        names = [s.name for s in journal.steps(source.id)]
        if isinstance(at_step, str):
            if at_step not in names:
                raise InvalidInputs(f"run {source.id[:12]} has no step {at_step!r}", agent_id=agent_id,
                                    hint=f"completed steps: {', '.join(names[:20]) or 'none'}")
            keep = names.index(at_step)
        else:
            if not 1 <= at_step <= len(names) + 1:
                raise InvalidInputs(f"at_step={at_step} is outside 1..{len(names) + 1}", agent_id=agent_id,
                                    hint="count completed steps from 1, in the order inspect lists them")
            keep = at_step - 1
        input_json = digest = None
        if inputs is not None:
            func = resolve_stored(source.target, TargetPolicy.of(app_dir, allow_targets), agent_id)
            input_json = _check_inputs(func, source.target, agent_id, inputs)
            digest = _codec.digest(input_json)
        return journal.fork_run(source.id, keep, input_json=input_json, input_digest=digest).id


def cancel_agent(agent_id: str, data_dir: str | os.PathLike[str], reason: str = "cancelled by an operator") -> Run:
    """End the agent's open run as ``cancelled`` (final). Refused while a supervisor owns the data dir."""
    with _offline_journal(agent_id, data_dir, "cancel") as journal:
        cancelled = record_cancel(journal, reason)
        if cancelled is None:
            runs = journal.runs()
            raise InvalidInputs(f"has no open run to cancel ({runs[-1].status if runs else 'no run'})",
                                agent_id=agent_id, hint="only a running (open) run can be cancelled")
        return cancelled


def record_cancel(journal: Journal, reason: str) -> Run | None:
    """End the agent's open run as ``cancelled`` with ``reason``; None when it has no open run. Offline here,
    or by the supervisor of a fleet once the agent's worker is gone (an operator's cancel)."""
    runs = journal.runs()
    if not runs or runs[-1].status != RUNNING:
        return None
    return journal.finish_run(runs[-1].id, CANCELLED, error_json=json.dumps({"type": "Cancelled", "message": reason}))


def retry_agent(agent_id: str, data_dir: str | os.PathLike[str], *, config: RunConfig | None = None,
                replica: str | None = None, app_dir: str | os.PathLike[str] | None = None,
                allow_targets: Sequence[str] = ()) -> Any:
    """Run a failed agent again from its last completed step (its failed run is reopened, not replaced),
    or resume an open run no supervisor runs (an agent its fleet gave up on after ``max_restarts``).

    The target is read from the shard (which may come from a replica), so it is imported only when its
    module lies under ``app_dir`` (default: the working directory) or matches ``allow_targets``.
    """
    policy = TargetPolicy.of(app_dir, allow_targets)
    with _offline_journal(agent_id, data_dir, "retry") as journal:
        runs = journal.runs()
        if not runs or runs[-1].status not in (FAILED, RUNNING):
            raise InvalidInputs(f"has no failed or open run to retry ({runs[-1].status if runs else 'no run'})",
                                agent_id=agent_id, hint="retry takes failed agents and open runs (gave_up); "
                                                        "a finished one starts again with new_run=True")
        resolve_stored(runs[-1].target, policy, agent_id)  # refused before the run is reopened; then cached
        run = journal.reopen(runs[-1].id) if runs[-1].status == FAILED else runs[-1]
    return run_agent(run.target, agent_id=agent_id, data_dir=data_dir, config=config, replica=replica,
                     **json.loads(run.input_json))


@contextlib.contextmanager
def _offline_journal(agent_id: str, data_dir: str | os.PathLike[str], what: str) -> Iterator[Journal]:
    """The agent's journal for a change made outside any run: only while no supervisor (nor run_agent with a
    replica) owns the data dir and no run of the agent is under way, both held until the change is done."""
    agent_id = validate_agent_id(agent_id)
    with lock_data_dir(data_dir, f"{what} agent {agent_id}", agent_id=agent_id), \
            lock_agent(data_dir, agent_id, what):
        journal = Journal(open_shard(Path(data_dir), agent_id, RunConfig().shard, create=False), agent_id)
        try:
            yield journal
        finally:
            journal.close()
