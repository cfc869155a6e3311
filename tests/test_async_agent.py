"""Async agents: the same durability as sync ones (replay, crashes, names, timeouts, budgets, drift, ledger),
on one event loop, against the fake server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest
from openai.types.chat import ChatCompletion

from agentshards import (
    BudgetExceeded,
    ConcurrentStepError,
    FakeLLMServer,
    InvalidTarget,
    LLMConfig,
    ModelPrice,
    NonDeterminismError,
    RunConfig,
    StepTimeout,
    arun_agent,
    inspect_agent,
    run_agent,
    spend_report,
)
from agentshards.testing._fakellm import Fault, serial_of

import async_agents
from agent_process import TESTS_DIR, completed_steps, wait_ready

PRICES = (("gpt-4o-mini", ModelPrice(input=0.15, output=0.60)),)


@pytest.fixture(autouse=True)
def _reset() -> None:
    for box in (async_agents.CALLS, async_agents.OBSERVED, async_agents.INTERRUPT_ONCE):
        box.clear()
    async_agents.PROMPT_SUFFIX[0] = ""


def _priced(llm: FakeLLMServer, **kw: Any) -> RunConfig:
    return RunConfig(llm=LLMConfig(api_key="k", base_url=llm.base_url, prices=PRICES, backoff_s=0.01), **kw)


def test_resume_replays_recorded_calls_and_steps_without_requests(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    config = _priced(fake_llm)
    async_agents.INTERRUPT_ONCE.append("m")
    with pytest.raises(async_agents.Interrupt):
        run_agent(async_agents.mixed, agent_id="m", data_dir=data_dir, config=config, n=2)
    assert fake_llm.request_count == 3 and async_agents.CALLS == ["plain", "sync"]
    result = run_agent(async_agents.mixed, agent_id="m", data_dir=data_dir, config=config, n=2)
    assert fake_llm.request_count == 4  # only the last call was new
    assert async_agents.CALLS == ["plain", "sync"]  # completed plain steps (async and sync fn) not re-run
    assert [serial_of(i) for i in result["chats"]] == [1, 2] and serial_of(result["last"]) == 4
    assert result["plain"] == {"v": 1} and result["sync"] == "sync"
    first_seen, replay_seen = (ChatCompletion.model_validate_json(j) for j in async_agents.OBSERVED)
    assert first_seen == replay_seen  # the replay hands back the same object as the first run
    steps = inspect_agent(data_dir, "m").runs[0].steps
    assert [(s.name, s.kind) for s in steps] == [("llm#1", "llm"), ("llm#2", "llm"), ("answer", "llm"),
                                                  ("plain", "step"), ("sync", "step"), ("llm#3", "llm")]
    # every call is in the cost ledger once; the replays of the second execution are counted as savings
    spend = spend_report(data_dir, "m").agents["m"]
    assert (spend.calls, spend.replayed_calls, spend.in_flight_calls) == (4, 3, 0)
    assert spend.spent_usd > 0 and spend.saved_usd > 0
    # a finished run returns its recorded result and executes nothing
    assert run_agent(async_agents.mixed, agent_id="m", data_dir=data_dir, config=config, n=2) == result
    assert fake_llm.request_count == 4


def test_gather_without_names_is_refused(data_dir: Path, run_config: RunConfig) -> None:
    with pytest.raises(ConcurrentStepError, match="fetch#2") as info:
        run_agent(async_agents.gathered, agent_id="g", data_dir=data_dir, named=False)
    assert "explicit unique names" in str(info.value) and "another thread or task" in str(info.value)
    with pytest.raises(ConcurrentStepError, match="llm#2"):
        run_agent(async_agents.gathered_llm, agent_id="g2", data_dir=data_dir, config=run_config)


def test_gather_with_names_works_and_keys_are_per_task(data_dir: Path) -> None:
    first = run_agent(async_agents.gathered, agent_id="g", data_dir=data_dir, named=True)
    assert [r["i"] for r in first] == [0, 1, 2]
    assert len({r["key"] for r in first}) == 3  # each task sees its own step's idempotency key
    steps = inspect_agent(data_dir, "g").runs[0].steps
    assert sorted(s.name for s in steps) == ["fetch-0", "fetch-1", "fetch-2"]
    assert [s.name for s in steps] == ["fetch-2", "fetch-1", "fetch-0"]  # recorded as they completed
    assert run_agent(async_agents.gathered, agent_id="g", data_dir=data_dir, named=True) == first


def test_nested_async_steps_are_refused(data_dir: Path) -> None:
    with pytest.raises(ConcurrentStepError, match="nested"):
        run_agent(async_agents.nested, agent_id="n", data_dir=data_dir)


def test_step_timeout_cancels_the_coroutine(data_dir: Path) -> None:
    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(StepTimeout, match="slow") as info:
            await arun_agent(async_agents.slow_step, agent_id="t", data_dir=data_dir, seconds=30, timeout_s=0.2)
        assert time.monotonic() - started < 5
        assert "cancelled" in str(info.value)
        assert async_agents.OBSERVED == ["started", "cancelled"]  # the step's coroutine saw its cancellation
        assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running on the loop

    threads = threading.active_count()
    asyncio.run(main())
    assert threading.active_count() <= threads + 6  # no step thread left behind (the pool's idle ones aside)
    assert inspect_agent(data_dir, "t").runs[0].steps == []  # nothing recorded; the run stays open
    assert run_agent(async_agents.slow_step, agent_id="t2", data_dir=data_dir, seconds=0.01, timeout_s=5) == "done"


def test_hanging_llm_call_is_cancelled_at_the_step_budget(data_dir: Path, fake_llm: FakeLLMServer,
                                                          run_config: RunConfig) -> None:
    fake_llm.inject(Fault(hang=True), times=5)
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="llm#1"):
        run_agent(async_agents.one_call, agent_id="h", data_dir=data_dir, config=run_config, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert inspect_agent(data_dir, "h").runs[0].steps == []


def test_transient_errors_are_retried_with_the_shared_rules(data_dir: Path, fake_llm: FakeLLMServer,
                                                            run_config: RunConfig) -> None:
    fake_llm.fail_next(1, status=429, retry_after_ms=50)
    fake_llm.fail_next(1, status=500)
    result = run_agent(async_agents.one_call, agent_id="r", data_dir=data_dir, config=run_config)
    assert fake_llm.request_count == 3 and serial_of(result) == 3
    fake_llm.fail_next(1, status=429, code="insufficient_quota")  # out of credit: not transient
    import openai

    with pytest.raises(openai.RateLimitError):
        run_agent(async_agents.one_call, agent_id="q", data_dir=data_dir, config=run_config)
    assert fake_llm.request_count == 4


def test_budget_exceeded(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    run_agent(async_agents.priced_calls, agent_id="probe", data_dir=data_dir, config=_priced(fake_llm), n=1)
    one_call = spend_report(data_dir, "probe").agents["probe"].spent_usd
    requests = fake_llm.request_count
    config = _priced(fake_llm, budget_usd=one_call * 1.5)  # crossed by the second call
    with pytest.raises(BudgetExceeded, match="budget") as info:
        run_agent(async_agents.priced_calls, agent_id="b", data_dir=data_dir, config=config, n=5)
    assert info.value.step == "llm#3"
    assert fake_llm.request_count - requests == 2
    report = inspect_agent(data_dir, "b")
    assert report.runs[0].run.status == "budget_exceeded" and len(report.runs[0].steps) == 2
    with pytest.raises(BudgetExceeded):  # final
        run_agent(async_agents.priced_calls, agent_id="b", data_dir=data_dir, config=config, n=5)
    assert fake_llm.request_count - requests == 2


def test_nondeterminism_is_detected(data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    async_agents.INTERRUPT_ONCE.append("d")
    with pytest.raises(async_agents.Interrupt):
        run_agent(async_agents.drifting, agent_id="d", data_dir=data_dir, config=run_config)
    async_agents.PROMPT_SUFFIX[0] = " changed"  # the code now asks llm#1 something else
    with pytest.raises(NonDeterminismError, match="llm#1") as info:
        run_agent(async_agents.drifting, agent_id="d", data_dir=data_dir, config=run_config)
    assert "a changed" in str(info.value) and "fork_run" in str(info.value)
    assert fake_llm.request_count == 1  # refused before any request
    assert inspect_agent(data_dir, "d").runs[0].run.status == "running"  # fix the code and re-run


def test_arun_agent_runs_many_agents_on_the_running_loop(data_dir: Path, fake_llm: FakeLLMServer,
                                                         run_config: RunConfig) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        runs = [arun_agent(async_agents.chat_calls, agent_id=f"a{i}", data_dir=data_dir, config=run_config, n=2)
                for i in range(5)]
        results = await asyncio.gather(*runs)
        assert asyncio.get_running_loop() is loop
        return results

    results = asyncio.run(main())
    assert fake_llm.request_count == 10 and all(len(r) == 2 for r in results)
    assert asyncio.run(main()) == results and fake_llm.request_count == 10  # a second loop: all replayed


def test_clients_are_bound_to_their_loop(data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    """Two loops one after the other, one configuration: the second loop must not reuse the first's client."""
    for i in range(2):
        asyncio.run(arun_agent(async_agents.one_call, agent_id=f"c{i}", data_dir=data_dir, config=run_config))
    assert fake_llm.request_count == 2


def test_run_agent_inside_a_running_loop_points_at_arun_agent(data_dir: Path) -> None:
    async def main() -> None:
        with pytest.raises(InvalidTarget, match="running event loop") as info:
            run_agent(async_agents.nested, agent_id="x", data_dir=data_dir)
        assert "arun_agent" in str(info.value)

    asyncio.run(main())
    assert not data_dir.exists()  # refused before anything was made


def test_arun_agent_runs_a_sync_agent_in_a_thread(data_dir: Path) -> None:
    import sample_agents

    result = asyncio.run(arun_agent(sample_agents.two_steps, agent_id="s", data_dir=data_dir, x=2))
    assert result["b"]["v"] == 8


CHILD = """
import json, sys
import openai  # preloaded so kill moments land in agent code, not in imports
import agentshards, async_agents
print("ready", flush=True)
result = agentshards.run_agent(async_agents.chat_calls, agent_id=sys.argv[2], data_dir=sys.argv[1], n=int(sys.argv[3]))
print(json.dumps(result), flush=True)
"""


def _spawn(data_dir: Path, base_url: str, calls: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AWS_", "AGENTSHARDS_", "TEST_"))}
    env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=base_url, PYTHONPATH=str(TESTS_DIR))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), "crashy", str(calls)],
                            stdout=subprocess.PIPE, text=True, env=env)


def _wait_for(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.001)


def test_sigkilled_async_agent_never_repeats_a_completed_call(tmp_path: Path) -> None:
    """SIGKILL a real process running an async agent while calls are in flight, committing or committed."""
    rng = random.Random(20261202)
    data_dir, calls, delay, kills = tmp_path / "data", 8, 0.05, 0
    extra: list[int] = []
    with FakeLLMServer(delay_s=delay) as llm:
        while kills < 5:
            done_before, requests_before = completed_steps(data_dir, "crashy"), llm.request_count
            proc = _spawn(data_dir, llm.base_url, calls)
            wait_ready(proc)
            _wait_for(lambda p=proc, n=requests_before: llm.request_count > n or p.poll() is not None)
            try:
                proc.wait(timeout=rng.uniform(0.0, 1.6 * delay if done_before < calls - 3 else 0.9 * delay))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                extra.append(llm.request_count - requests_before - (completed_steps(data_dir, "crashy") - done_before))
            else:
                raise AssertionError(f"the agent finished after only {kills} kills; shorten the kill window")
        proc = _spawn(data_dir, llm.base_url, calls)
        wait_ready(proc)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        result = json.loads(out)
        log = list(llm.requests)
    assert all(0 <= e <= 1 for e in extra), extra  # at most the one request in flight was sent again
    assert len(log) - calls == sum(extra)
    assert [r["i"] for r in result] == list(range(calls))
    for entry in result:  # once its answer was recorded, a call was never requested again
        serial, prompt = serial_of(entry["id"]), f"call {entry['i']} of {calls}"
        assert {r.serial: r for r in log}[serial].body["messages"][0]["content"] == prompt
        assert [r.serial for r in log if r.serial > serial and r.body["messages"][0]["content"] == prompt] == []
    conn = apsw.Connection(str(data_dir / "crashy.db"), flags=apsw.SQLITE_OPEN_READONLY)
    ledgered = {name for (name,) in conn.execute("SELECT step_name FROM llm_ledger WHERE event = 'call'")}
    conn.close()
    assert ledgered == {f"llm#{i}" for i in range(1, calls + 1)}  # every completed call is in the cost ledger


def test_a_fleet_worker_hosts_async_agents_on_one_loop_and_survives_a_kill(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from agentshards import Fleet, SupervisorConfig

    with FakeLLMServer(delay_s=0.03) as llm:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        fleet = Fleet(tmp_path / "fleet", app_dir=TESTS_DIR,
                      config=SupervisorConfig(agents_per_worker=3, concurrency=6, restart_backoff_s=0.05))
        fleet.launch("async_agents:where", {f"w{i}": {"n": 6} for i in range(6)})
        killed: list[int] = []

        def killer() -> None:  # the fleet runs inside wait(): kill one worker once its agents are under way
            _wait_for(lambda: llm.request_count >= 12 and len(fleet.worker_pids()) == 2, deadline_s=60)
            killed.append(fleet.worker_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        results = fleet.wait(timeout_s=120)
        thread.join()
        log = list(llm.requests)
        victim = killed[0]
    assert all(isinstance(r, dict) for r in results.values()), results
    by_pid: dict[int, set[str]] = {}
    for result in results.values():
        by_pid.setdefault(result["pid"], set()).add(result["thread"])
    assert victim not in by_pid and all(threads == {"MainThread"} for threads in by_pid.values())  # one loop
    assert sum(s.restarts for s in fleet.status().values()) >= 1
    answered = [(r.body["user"], r.body["messages"][0]["content"]) for r in log]
    assert len(answered) - len(set(answered)) <= 3  # at most one in-flight call per agent of the killed worker
    for agent_id in results:
        steps = inspect_agent(tmp_path / "fleet", agent_id).runs[-1].steps
        assert len(steps) == 6 and len(set(answered) & {(agent_id, f"call {i} of 6") for i in range(6)}) == 6


def test_async_agents_in_a_worker_each_log_to_their_own_file(tmp_path: Path) -> None:
    from agentshards import Fleet

    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR, agents_per_worker=2)
    fleet.launch("async_agents:fails", {"l1": {"message": "first problem"}, "l2": {"message": "second"}})
    fleet.wait(timeout_s=60)
    one = (tmp_path / "d" / ".fleet" / "logs" / "l1.log").read_text()
    two = (tmp_path / "d" / ".fleet" / "logs" / "l2.log").read_text()
    assert "first problem" in one and "first problem" not in two and "second" in two


def test_replicated_async_steps_return_once_the_replica_has_them(tmp_path: Path) -> None:
    """Real Litestream, a directory replica: every step is confirmed (and marked) before it returns."""
    from agentshards import restore_agent

    replica = tmp_path / "replica"
    assert len(run_agent(async_agents.replicated, agent_id="r", data_dir=tmp_path / "n1", replica=str(replica),
                         n=3)) == 3
    steps = inspect_agent(tmp_path / "n1", "r").runs[0].steps
    assert [s.name for s in steps] == ["rep", "rep#2", "rep#3"] and all(s.replicated_at for s in steps)
    restore_agent("r", tmp_path / "n2", str(replica))
    assert len(inspect_agent(tmp_path / "n2", "r").runs[0].steps) == 3


def test_a_cancelled_arun_agent_leaves_its_run_open_and_its_locks_released(data_dir: Path) -> None:
    from agentshards import cancel_agent

    async def main() -> None:
        task = asyncio.ensure_future(arun_agent(async_agents.slow_step, agent_id="c", data_dir=data_dir,
                                                seconds=30, timeout_s=60))
        deadline = time.monotonic() + 30
        while async_agents.OBSERVED != ["started"]:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert async_agents.OBSERVED == ["started", "cancelled"]

    asyncio.run(main())
    assert inspect_agent(data_dir, "c").runs[0].run.status == "running"  # a cancellation is not an outcome
    assert cancel_agent("c", data_dir).status == "cancelled"  # takes the agent's lock: it was released
