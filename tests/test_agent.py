"""run_agent and agent.step: naming, replay, values, runs, and every misuse giving a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentshards import (
    AgentFailed,
    ConcurrentStepError,
    InvalidInputs,
    InvalidStepName,
    InvalidTarget,
    ResultNotStorable,
    RunMismatch,
    inspect_agent,
    run_agent,
)

import async_agents
import sample_agents


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    sample_agents.CALLS.clear()


def test_steps_are_named_by_occurrence_and_replayed(data_dir: Path) -> None:
    first = run_agent(sample_agents.two_steps, agent_id="a1", data_dir=data_dir, x=3)
    assert first["a"]["v"] == 6 and first["b"]["v"] == 12
    assert sample_agents.CALLS == ["double-3", "double-again-3"]
    report = inspect_agent(data_dir, "a1")
    assert [s.name for s in report.runs[0].steps] == ["double", "double#2"]
    # A finished run returns its recorded result without executing anything.
    assert run_agent(sample_agents.two_steps, agent_id="a1", data_dir=data_dir, x=3) == first
    assert sample_agents.CALLS == ["double-3", "double-again-3"]


def test_resume_replays_completed_steps_of_an_open_run(data_dir: Path) -> None:
    """Simulate a crash after the first step: the open run resumes and only the second step executes."""
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.two_steps_then_interrupt, agent_id="a1", data_dir=data_dir, x=5)
    assert sample_agents.CALLS == ["double-5"]
    result = run_agent(sample_agents.two_steps_then_interrupt, agent_id="a1", data_dir=data_dir, x=5)
    assert sample_agents.CALLS == ["double-5", "double-again-5"]
    assert result["a"] == {"v": 10}


def test_first_run_and_replay_see_identical_values(data_dir: Path) -> None:
    assert run_agent(sample_agents.returns_tuple, agent_id="t", data_dir=data_dir) == [1, 2]
    assert run_agent(sample_agents.returns_tuple, agent_id="t", data_dir=data_dir) == [1, 2]


def test_unstorable_step_result_raises_at_record_time(data_dir: Path) -> None:
    with pytest.raises(ResultNotStorable) as info:
        run_agent(sample_agents.returns_set, agent_id="s", data_dir=data_dir)
    assert "'bad'" in str(info.value) and "set" in str(info.value) and "hint:" in str(info.value)
    assert inspect_agent(data_dir, "s").runs[0].steps == []
    assert inspect_agent(data_dir, "s").runs[0].run.status == "running"  # fix the code and re-run


def test_unstorable_agent_result(data_dir: Path) -> None:
    with pytest.raises(ResultNotStorable, match="agent result"):
        run_agent(sample_agents.returns_object, agent_id="o", data_dir=data_dir)


def test_failed_run_is_recorded_and_not_re_executed(data_dir: Path) -> None:
    with pytest.raises(AgentFailed, match="boom") as info:
        run_agent(sample_agents.raises, agent_id="f", data_dir=data_dir, message="boom")
    assert info.value.error_type == "builtins.RuntimeError"
    with pytest.raises(AgentFailed, match="boom"):
        run_agent(sample_agents.raises, agent_id="f", data_dir=data_dir, message="boom")
    assert sample_agents.CALLS == ["before-raise"]
    with pytest.raises(AgentFailed):
        run_agent(sample_agents.raises, agent_id="f", data_dir=data_dir, new_run=True, message="boom")
    assert sample_agents.CALLS == ["before-raise", "before-raise"]


def test_changed_inputs_or_target_need_new_run(data_dir: Path) -> None:
    run_agent(sample_agents.two_steps, agent_id="a1", data_dir=data_dir, x=1)
    with pytest.raises(RunMismatch, match="inputs"):
        run_agent(sample_agents.two_steps, agent_id="a1", data_dir=data_dir, x=2)
    with pytest.raises(RunMismatch, match="target"):
        run_agent(sample_agents.returns_tuple, agent_id="a1", data_dir=data_dir)
    assert run_agent(sample_agents.two_steps, agent_id="a1", data_dir=data_dir, new_run=True, x=2)["a"]["v"] == 4
    assert [r.run.status for r in inspect_agent(data_dir, "a1").runs] == ["succeeded", "succeeded"]


def test_inputs_are_compared_canonically(data_dir: Path) -> None:
    run_agent(sample_agents.echo_inputs, agent_id="c", data_dir=data_dir, a={"x": 1, "y": 2}, b=1.0)
    assert run_agent(sample_agents.echo_inputs, agent_id="c", data_dir=data_dir, b=1.0, a={"y": 2, "x": 1})


def test_concurrent_unnamed_steps_are_refused(data_dir: Path) -> None:
    with pytest.raises(ConcurrentStepError, match="same#2") as info:
        run_agent(sample_agents.concurrent_unnamed, agent_id="c", data_dir=data_dir)
    assert "explicit unique names" in str(info.value)


def test_concurrent_explicitly_named_steps_work(data_dir: Path) -> None:
    assert run_agent(sample_agents.concurrent_named, agent_id="c", data_dir=data_dir) == [0, 1, 2]


def test_nested_steps_are_refused(data_dir: Path) -> None:
    with pytest.raises(ConcurrentStepError, match="nested"):
        run_agent(sample_agents.nested, agent_id="n", data_dir=data_dir)


@pytest.mark.parametrize("name", ["", "a#1", "llm", "x" * 201, "tab\there", 5])
def test_bad_step_names(data_dir: Path, name: object) -> None:
    with pytest.raises(InvalidStepName):
        run_agent(sample_agents.named_step, agent_id="n", data_dir=data_dir, name=name)


def test_sql_in_step_names_is_stored_literally(data_dir: Path) -> None:
    name = "x'); DROP TABLE steps; --"
    assert run_agent(sample_agents.named_step, agent_id="n", data_dir=data_dir, name=name) == name
    assert [s.name for s in inspect_agent(data_dir, "n").runs[0].steps] == [name]


def test_main_and_local_targets_are_refused(data_dir: Path) -> None:
    def local(agent: object) -> None:
        return None

    local.__module__ = "__main__"
    with pytest.raises(InvalidTarget, match="__main__") as info:
        run_agent(local, agent_id="m", data_dir=data_dir)
    assert "move it into a module" in str(info.value)
    with pytest.raises(InvalidTarget, match="module-level"):
        run_agent(sample_agents.not_module_level(), agent_id="m", data_dir=data_dir)
    with pytest.raises(InvalidTarget, match="cannot import"):
        run_agent("no_such_module_xyz:f", agent_id="m", data_dir=data_dir)
    assert not data_dir.exists()


def test_string_targets_run(data_dir: Path) -> None:
    assert run_agent("sample_agents:returns_tuple", agent_id="s", data_dir=data_dir) == [1, 2]


def test_bad_inputs(data_dir: Path) -> None:
    with pytest.raises(InvalidInputs, match="JSON"):
        run_agent(sample_agents.two_steps, agent_id="b", data_dir=data_dir, x=float("nan"))
    with pytest.raises(InvalidInputs, match="does not accept"):
        run_agent(sample_agents.two_steps, agent_id="b", data_dir=data_dir, y=1)
    with pytest.raises(InvalidInputs, match=r"over the .* limit") as info:
        run_agent(sample_agents.echo_inputs, agent_id="b", data_dir=data_dir, a="x" * (33 * 1024 * 1024), b=1)
    assert "hint:" in str(info.value)
    assert not data_dir.exists()


def test_oversized_step_result_is_refused_and_not_recorded(data_dir: Path) -> None:
    with pytest.raises(ResultNotStorable, match=r"over the .* limit") as info:
        run_agent(sample_agents.big_result, agent_id="big", data_dir=data_dir, mb=33)
    assert "agent 'big'" in str(info.value) and "hint:" in str(info.value)
    assert inspect_agent(data_dir, "big").runs[0].steps == []


def test_async_generator_agents_are_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidTarget, match="async generator"):
        run_agent(async_agents.async_generator_agent, agent_id="a", data_dir=data_dir)
    with pytest.raises(InvalidTarget, match="async generator"):
        run_agent("async_agents:async_generator_agent", agent_id="a", data_dir=data_dir)
    assert not data_dir.exists()
