"""Intent records, retries that cannot multiply, timeouts, non-determinism detection and forks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import openai
import pytest

from agentshards import (
    AgentFailed,
    FakeLLMServer,
    InFlightStepError,
    InvalidInputs,
    LLMConfig,
    LLMRequestRejected,
    NonDeterminismError,
    RunConfig,
    StepTimeout,
    fork_run,
    inspect_agent,
    run_agent,
)
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards.testing._fakellm import Fault, serial_of

import sample_agents


@pytest.fixture(autouse=True)
def _reset() -> None:
    sample_agents.CALLS.clear()
    sample_agents.KEYS.clear()
    sample_agents.FLAKY.clear()
    sample_agents.PROMPT_SUFFIX[:] = ["", ""]


def _steps(data_dir: Path, agent_id: str, run: int = -1) -> list[str]:
    return [s.name for s in inspect_agent(data_dir, agent_id).runs[run].steps]


# -- intent records ------------------------------------------------------------------------------------

def test_every_llm_request_commits_an_attempt_first(data_dir: Path, fake_llm: FakeLLMServer,
                                                   run_config: RunConfig) -> None:
    fake_llm.fail_next(2, status=500)
    run_agent(sample_agents.chat_calls, agent_id="a", data_dir=data_dir, config=run_config, n=2)
    report = inspect_agent(data_dir, "a").runs[0]
    assert [(a.step_name, a.attempt) for a in report.attempts] == [("llm#1", 1), ("llm#1", 2), ("llm#1", 3),
                                                                   ("llm#2", 1)]
    assert len(report.attempts) == fake_llm.request_count == 4
    assert report.in_flight == []
    # plain steps do not pay for intent records
    run_agent(sample_agents.two_steps, agent_id="p", data_dir=data_dir, x=1)
    assert inspect_agent(data_dir, "p").runs[0].attempts == []


def _leave_in_flight(data_dir: Path, agent_id: str) -> None:
    """An attempt row with no completed step: what a kill during the request leaves behind."""
    journal = Journal(open_shard(data_dir, agent_id, RunConfig().shard), agent_id)
    run = journal.begin_run("sample_agents:one_call", '{"prompt":"hello"}', _digest('{"prompt":"hello"}'))
    journal.begin_attempt(run.id, "llm#1", "h")
    journal.close()


def _digest(text: str) -> str:
    from agentshards._core.codec import digest

    return digest(text)


def test_in_flight_steps_are_surfaced_and_retried_by_default(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, caplog: pytest.LogCaptureFixture) -> None:
    _leave_in_flight(data_dir, "f")
    assert [a.step_name for a in inspect_agent(data_dir, "f").runs[0].in_flight] == ["llm#1"]
    with caplog.at_level(logging.WARNING, logger="agentshards"):
        run_agent(sample_agents.one_call, agent_id="f", data_dir=data_dir, config=run_config, prompt="hello")
    assert "'llm#1' was in flight" in caplog.text
    report = inspect_agent(data_dir, "f").runs[0]
    assert report.in_flight == [] and [a.attempt for a in report.attempts] == [1, 2]
    assert fake_llm.request_count == 1


def test_in_flight_policy_fail_stops_before_paying_again(data_dir: Path, fake_llm: FakeLLMServer,
                                                         run_config: RunConfig) -> None:
    _leave_in_flight(data_dir, "f")
    strict = RunConfig(llm=run_config.llm, in_flight="fail")
    with pytest.raises(InFlightStepError, match="llm#1") as info:
        run_agent(sample_agents.one_call, agent_id="f", data_dir=data_dir, config=strict, prompt="hello")
    assert "in_flight='retry'" in str(info.value)
    assert fake_llm.request_count == 0
    assert inspect_agent(data_dir, "f").runs[0].run.status == "running"


def test_idempotency_key_is_stable_across_re_runs_of_a_step(data_dir: Path) -> None:
    first = run_agent(sample_agents.pays_once, agent_id="k", data_dir=data_dir, amount=5)
    other = run_agent(sample_agents.pays_once, agent_id="k2", data_dir=data_dir, amount=5)
    assert first["key"] != other["key"]
    # Re-executing the same step of the same run (as after a crash before its record) sees the same key.
    journal = Journal(open_shard(data_dir, "k", RunConfig().shard), "k")
    run_id = journal.runs()[0].id
    journal.close()
    from agentshards._core.agent import Agent

    agent = Agent(Journal(open_shard(data_dir, "k", RunConfig().shard), "k"), run_id, RunConfig())
    agent._completed.clear()
    again = agent.step("pay", lambda: sample_agents.charge(5, agent.idempotency_key()))
    assert again["key"] == first["key"]


# -- retries -----------------------------------------------------------------------------------------

def test_429_retry_after_is_honoured(data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.fail_next(1, status=429, code="rate_limit_exceeded", retry_after="0.6")
    start = time.monotonic()
    run_agent(sample_agents.one_call, agent_id="r", data_dir=data_dir, config=run_config)
    assert time.monotonic() - start >= 0.6
    assert fake_llm.request_count == 2
    fake_llm.fail_next(1, status=429, code="rate_limit_exceeded", retry_after_ms=400)
    start = time.monotonic()
    run_agent(sample_agents.one_call, agent_id="r2", data_dir=data_dir, config=run_config)
    assert time.monotonic() - start >= 0.4
    assert fake_llm.request_count == 4


def test_retries_stop_at_the_budget(data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.fail_next(10, status=503)
    with pytest.raises(openai.InternalServerError):
        run_agent(sample_agents.one_call, agent_id="b", data_dir=data_dir, config=run_config, max_attempts=2)
    assert fake_llm.request_count == 2
    assert inspect_agent(data_dir, "b").runs[0].run.status == "running"  # environment error: resumable


@pytest.mark.parametrize(("status", "code", "error"), [
    (429, "insufficient_quota", openai.RateLimitError),
    (401, "invalid_api_key", openai.AuthenticationError),
    (403, None, openai.PermissionDeniedError),
    (404, "model_not_found", openai.NotFoundError),
])
def test_non_transient_errors_are_neither_retried_nor_recorded(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, status: int, code: str | None,
        error: type[Exception]) -> None:
    fake_llm.fail_next(1, status=status, code=code)
    with pytest.raises(error):
        run_agent(sample_agents.one_call, agent_id="n", data_dir=data_dir, config=run_config)
    assert fake_llm.request_count == 1
    assert _steps(data_dir, "n") == []
    # fixing the key/model/quota and re-running works: the run was left open
    result = run_agent(sample_agents.one_call, agent_id="n", data_dir=data_dir, config=run_config)
    assert serial_of(result["id"]) == 2


def test_rejected_requests_are_recorded_outcomes(data_dir: Path, fake_llm: FakeLLMServer,
                                                 run_config: RunConfig) -> None:
    fake_llm.fail_next(1, status=400, code="invalid_value")
    first = run_agent(sample_agents.catches_rejection, agent_id="x", data_dir=data_dir, config=run_config)
    assert first["rejected"] == {"status": 400, "code": "invalid_value"}
    assert fake_llm.request_count == 2
    report = inspect_agent(data_dir, "x").runs[0]
    assert [s.outcome for s in report.steps] == ["error", "ok"]
    # uncaught, the rejection ends the run as failed; a replay raises it without a request
    fake_llm.fail_next(1, status=400, code="invalid_value")
    with pytest.raises(AgentFailed, match="rejected"):
        run_agent(sample_agents.one_call, agent_id="y", data_dir=data_dir, config=run_config)
    assert inspect_agent(data_dir, "y").runs[0].run.status == "failed"
    assert fake_llm.request_count == 3


def test_rejection_replays_without_a_request(data_dir: Path, fake_llm: FakeLLMServer,
                                            run_config: RunConfig) -> None:
    journal_run = run_agent  # readability: two runs of the same open run
    fake_llm.fail_next(1, status=422, code="bad_schema")
    with pytest.raises(KeyboardInterrupt):
        journal_run(sample_agents.rejection_then_interrupt, agent_id="z", data_dir=data_dir, config=run_config)
    assert fake_llm.request_count == 1
    with pytest.raises(AgentFailed) as info:
        journal_run(sample_agents.rejection_then_interrupt, agent_id="z", data_dir=data_dir, config=run_config)
    cause = info.value.__cause__
    assert isinstance(cause, LLMRequestRejected) and cause.status == 422 and cause.code == "bad_schema"
    assert fake_llm.request_count == 1


# -- timeouts --------------------------------------------------------------------------------------------

def test_hanging_llm_call_times_out_within_the_step_budget(data_dir: Path, fake_llm: FakeLLMServer,
                                                           run_config: RunConfig) -> None:
    fake_llm.inject(Fault(hang=True), times=5)
    start = time.monotonic()
    with pytest.raises(StepTimeout, match="llm#1"):
        run_agent(sample_agents.one_call, agent_id="h", data_dir=data_dir, config=run_config, timeout_s=0.8)
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed < 5
    assert 1 <= fake_llm.request_count <= 3
    assert _steps(data_dir, "h") == []


def test_slow_llm_answer_inside_the_budget_is_kept(data_dir: Path, fake_llm: FakeLLMServer,
                                                   run_config: RunConfig) -> None:
    fake_llm.inject(Fault(delay_s=0.3))
    result = run_agent(sample_agents.one_call, agent_id="d", data_dir=data_dir, config=run_config, timeout_s=5)
    assert serial_of(result["id"]) == 1


def test_plain_step_retry_budget(data_dir: Path) -> None:
    assert run_agent(sample_agents.retried_step, agent_id="s", data_dir=data_dir,
                     config=RunConfig(llm=LLMConfig(backoff_s=0.01)), failures=2, attempts=3) == "retried ok after 3"
    sample_agents.FLAKY.clear()
    with pytest.raises(AgentFailed, match="flaky retried failure 2"):
        run_agent(sample_agents.retried_step, agent_id="s2", data_dir=data_dir,
                  config=RunConfig(llm=LLMConfig(backoff_s=0.01)), failures=5, attempts=2)


def test_plain_step_timeout(data_dir: Path) -> None:
    with pytest.raises(StepTimeout, match="slow"):
        run_agent(sample_agents.slow_step, agent_id="t", data_dir=data_dir, seconds=2.0, timeout_s=0.2)
    assert _steps(data_dir, "t") == []
    assert run_agent(sample_agents.slow_step, agent_id="t2", data_dir=data_dir, seconds=0.01, timeout_s=2) == "done"


# -- non-determinism -------------------------------------------------------------------------------------

def _interrupted_drift(data_dir: Path, config: RunConfig) -> None:
    """Run `drifting` to completion of all steps but leave the run open (as if killed before finishing)."""
    run_agent(sample_agents.drifting, agent_id="nd", data_dir=data_dir, config=config, topic="t")
    journal = Journal(open_shard(data_dir, "nd", RunConfig().shard), "nd")
    journal._conn.execute("UPDATE workflows SET status = 'running', output_json = NULL, finished_at = NULL")
    journal.close()


def test_changed_llm_request_on_replay_is_detected(data_dir: Path, fake_llm: FakeLLMServer,
                                                   run_config: RunConfig) -> None:
    _interrupted_drift(data_dir, run_config)
    sample_agents.PROMPT_SUFFIX[0] = " (changed)"
    with pytest.raises(NonDeterminismError) as info:
        run_agent(sample_agents.drifting, agent_id="nd", data_dir=data_dir, config=run_config, topic="t")
    message = str(info.value)
    assert "llm#2" in message and "b t (changed)" in message and "fork_run" in message and "new_run" in message
    assert fake_llm.request_count == 2


def test_changed_plain_step_arguments_are_detected(data_dir: Path, run_config: RunConfig) -> None:
    _interrupted_drift(data_dir, run_config)
    sample_agents.PROMPT_SUFFIX[1] = "-v2"
    with pytest.raises(NonDeterminismError, match="'tag'") as info:
        run_agent(sample_agents.drifting, agent_id="nd", data_dir=data_dir, config=run_config, topic="t")
    assert "tag-t-v2" in str(info.value) and "sample_agents.record_call" in str(info.value)


def test_unjsonable_arguments_hash_only_the_function(data_dir: Path) -> None:
    assert run_agent(sample_agents.opaque_args, agent_id="o", data_dir=data_dir, n=3) == 3
    (step,) = inspect_agent(data_dir, "o").runs[0].steps
    assert step.input_preview == '{"fn":"sample_agents._count_items"}'
    assert "0x" not in (step.input_preview or "")


def test_fork_from_step_n_keeps_earlier_steps(data_dir: Path, fake_llm: FakeLLMServer,
                                              run_config: RunConfig) -> None:
    _interrupted_drift(data_dir, run_config)
    sample_agents.PROMPT_SUFFIX[0] = " (changed)"
    new_id = fork_run("nd", data_dir, at_step="llm#2")
    result = run_agent(sample_agents.drifting, agent_id="nd", data_dir=data_dir, config=run_config, topic="t")
    assert fake_llm.request_count == 3  # only llm#2 ran again
    assert serial_of(result[0]) == 1 and serial_of(result[2]) == 3
    runs = inspect_agent(data_dir, "nd").runs
    assert runs[-1].run.id == new_id and runs[-1].run.forked_from == runs[0].run.id
    assert [r.run.status for r in runs] == ["superseded", "succeeded"]
    assert _steps(data_dir, "nd") == ["llm#1", "tag", "llm#2", "opaque"]
    with pytest.raises(InvalidInputs, match="outside"):
        fork_run("nd", data_dir, at_step=99)
    with pytest.raises(InvalidInputs, match="no step 'nope'"):
        fork_run("nd", data_dir, at_step="nope")
