"""``run_agent``: run one agent in this process, resuming its open run or reporting its finished one."""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from . import _codec
from ._agent import Agent
from ._config import RunConfig, llm_config_from_env
from ._errors import AgentFailed, AgentShardsError, InvalidInputs, LLMRequestRejected, ShardError
from ._journal import FAILED, SUCCEEDED, Journal
from ._shard import open_shard, validate_agent_id
from ._target import AgentFn, resolve, target_of

RESERVED_INPUTS = frozenset({"agent_id", "data_dir", "new_run", "config"})
CRASH_ENV = "AGENTSHARDS_TEST_CRASH"


def run_agent(
    fn: AgentFn | str,
    *,
    agent_id: str,
    data_dir: str | os.PathLike[str],
    new_run: bool = False,
    config: RunConfig | None = None,
    **inputs: Any,
) -> Any:
    """Run ``fn(agent, **inputs)`` durably as agent ``agent_id`` with its shard in ``data_dir``.

    - No run yet: start one. An open run with the same target and inputs: resume it, replaying every
      completed step from the journal. A finished run: return its recorded result (or raise
      AgentFailed with its recorded error) without executing anything.
    - Another target or other inputs: RunMismatch, unless ``new_run=True`` starts a fresh run.
    - ``config`` defaults to FULL sync and the OpenAI settings in ``OPENAI_API_KEY``/``OPENAI_BASE_URL``
      (read here, at the edge, and nowhere else).

    Everything is validated before the disk is touched. The result is the JSON value the journal holds.
    """
    agent_id = validate_agent_id(agent_id)
    target, func = target_of(fn)
    input_json = _check_inputs(func, target, agent_id, inputs)
    if config is None:
        config = RunConfig(llm=llm_config_from_env(os.environ), crash_plan=os.environ.get(CRASH_ENV))
    journal = Journal(open_shard(Path(data_dir), agent_id, config.shard), agent_id)
    try:
        run = journal.begin_run(target, input_json, _codec.digest(input_json), new_run=new_run)
        if run.status == SUCCEEDED:
            return _codec.loads(run.output_json or "null")
        if run.status == FAILED:
            raise _failure(agent_id, run.error_json)
        agent = Agent(journal, run.id, config)
        try:
            result = func(agent, **_codec.loads(input_json))
        except Exception as exc:
            if _leaves_run_open(exc):
                raise
            error = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)[:4000],
                     "traceback": "".join(traceback.format_exception(exc))[-8000:]}
            run = journal.finish_run(run.id, FAILED, error_json=json.dumps(error))
            raise _failure(agent_id, run.error_json) from exc
        output = _codec.dumps(result, agent_id=agent_id, step=None, what="agent result")
        run = journal.finish_run(run.id, SUCCEEDED, output_json=output)
        if run.status == FAILED:
            raise _failure(agent_id, run.error_json)
        return _codec.loads(run.output_json or "null")
    finally:
        journal.close()


def _check_inputs(func: AgentFn, target: str, agent_id: str, inputs: dict[str, Any]) -> str:
    """Inputs must be JSON (they are journaled and compared on resume) and fit the function's signature."""
    try:
        text = _codec.canonical(inputs)
    except (TypeError, ValueError) as exc:
        raise InvalidInputs(f"inputs for {target} are not JSON-able: {exc}", agent_id=agent_id,
                            hint="pass str/int/float/bool/None/list/dict inputs") from exc
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


def _failure(agent_id: str, error_json: str | None) -> AgentFailed:
    error = json.loads(error_json or "{}")
    etype, emsg = str(error.get("type", "?")), str(error.get("message", ""))
    return AgentFailed(f"its run failed with {etype}: {emsg[:500]}", error_type=etype, error_message=emsg,
                       agent_id=agent_id, hint="the failure is recorded; pass new_run=True to run it again")


def fork_run(agent_id: str, data_dir: str | os.PathLike[str], *, at_step: int | str,
             inputs: dict[str, Any] | None = None) -> str:
    """Start a new run of the agent that keeps the steps completed before ``at_step``; return its id.

    ``at_step`` is the 1-based position (in completion order) or the name of the first step to run
    afresh. The way out of a NonDeterminismError that keeps what is still valid: steps before the fork
    point replay, later ones run again. ``inputs`` replaces the run's inputs (default: unchanged); run
    the agent again with those inputs to continue. The previous run stays in the journal.
    """
    agent_id = validate_agent_id(agent_id)
    journal = Journal(open_shard(Path(data_dir), agent_id, RunConfig().shard, create=False), agent_id)
    try:
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
            func = resolve(source.target)
            input_json = _check_inputs(func, source.target, agent_id, inputs)
            digest = _codec.digest(input_json)
        return journal.fork_run(source.id, keep, input_json=input_json, input_digest=digest).id
    finally:
        journal.close()
