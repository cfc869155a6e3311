"""The cost ledger, budgets and the Responses API, against the fake server over real HTTP."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from openai.types.responses import Response

from agentshards import (
    BudgetExceeded,
    FakeLLMServer,
    LLMConfig,
    LLMError,
    ModelPrice,
    RunConfig,
    inspect_agent,
    run_agent,
    spend_report,
)
from agentshards._core.journal import Journal
from agentshards._core.shard import open_shard
from agentshards.testing._fakellm import serial_of

import sample_agents

PRICES = (("gpt-4o-mini", ModelPrice(input=0.15, output=0.60, cached_input=0.075)),)


@pytest.fixture(autouse=True)
def _reset() -> None:
    sample_agents.HOOKS.clear()
    sample_agents.SEEN.clear()


def _config(llm: FakeLLMServer, **kw: object) -> RunConfig:
    return RunConfig(llm=LLMConfig(api_key="k", base_url=llm.base_url, prices=PRICES, backoff_s=0.01),
                     **kw)  # type: ignore[arg-type]


def _expected_cost(llm: FakeLLMServer, cached: int = 0) -> float:
    """Recompute each call's cost from what the server answered (its usage), at the PRICES above."""
    total = 0.0
    for req in llm.requests:
        prompt = sum(len(str(m["content"]).split()) + 4 for m in req.body["messages"])
        completion = len(f"[xxxxxxxx] answer to: {req.body['messages'][-1]['content']}".split())
        hit = min(cached, prompt)
        total += ((prompt - hit) * 0.15 + hit * 0.075 + completion * 0.60) / 1e6
    return total


def test_each_call_is_priced_from_the_table_including_dated_models(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    run_agent(sample_agents.priced_calls, agent_id="p", data_dir=data_dir, config=_config(fake_llm), n=3, cached=2)
    report = spend_report(data_dir, "p")
    spend = report.agents["p"]
    assert spend.calls == 3 and spend.unpriced_calls == 0
    assert spend.spent_usd == pytest.approx(_expected_cost(fake_llm, cached=2), rel=1e-9)
    assert spend.input_tokens > 0 and spend.output_tokens > 0
    journal = Journal(open_shard(data_dir, "p", RunConfig().shard), "p")
    (model,), = journal._conn.execute("SELECT DISTINCT model FROM llm_ledger").fetchall()
    journal.close()
    assert model == "gpt-4o-mini-2024-07-18"  # recorded as returned, priced as its base model


def test_unknown_models_cost_null_with_a_warning(data_dir: Path, fake_llm: FakeLLMServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agentshards"):
        run_agent(sample_agents.priced_calls, agent_id="u", data_dir=data_dir, config=_config(fake_llm), n=2,
                  model="mystery-model-xyz")
    spend = spend_report(data_dir, "u").agents["u"]
    assert (spend.calls, spend.unpriced_calls, spend.spent_usd) == (2, 2, 0.0)
    assert "mystery-model-xyz" in caplog.text and "cost NULL" in caplog.text


def test_resume_counts_savings_once_per_execution_and_spend_once(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    config = _config(fake_llm)
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.priced_calls, agent_id="s", data_dir=data_dir, config=config, n=4, interrupt_after=2)
    after_first = spend_report(data_dir, "s").agents["s"]
    assert (after_first.calls, after_first.replayed_calls, after_first.saved_usd) == (2, 0, 0.0)
    run_agent(sample_agents.priced_calls, agent_id="s", data_dir=data_dir, config=config, n=4, interrupt_after=2)
    spend = spend_report(data_dir, "s").agents["s"]
    assert spend.calls == 4 == fake_llm.request_count
    assert spend.replayed_calls == 2
    assert spend.saved_usd == pytest.approx(after_first.spent_usd, rel=1e-9)
    assert spend.spent_usd == pytest.approx(_expected_cost(fake_llm), rel=1e-9)
    # a finished run returns its result without executing: nothing more spent or counted
    run_agent(sample_agents.priced_calls, agent_id="s", data_dir=data_dir, config=config, n=4, interrupt_after=2)
    assert spend_report(data_dir, "s").agents["s"] == spend
    # the ledger is append-only and keyed per execution: recording the same replays again changes nothing
    journal = Journal(open_shard(data_dir, "s", RunConfig().shard), "s")
    run = journal.runs()[0]
    replays = [(n, *journal.recorded_calls(run.id)[n]) for n in ("llm#1", "llm#2")]
    journal.record_replays(run.id, run.executions, replays)
    assert journal.spend().replayed_calls == 2
    journal.close()


def test_in_flight_calls_are_estimated_not_dropped(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    config = _config(fake_llm)
    run_agent(sample_agents.priced_calls, agent_id="f", data_dir=data_dir, config=config, n=2)
    journal = Journal(open_shard(data_dir, "f", RunConfig().shard), "f")
    run = journal.begin_run("x:y", "{}", "other", new_run=True)
    journal.begin_attempt(run.id, "llm#1", "h")  # sent, then the agent died: no answer, no step
    per_call = journal.spend().spent_usd / 2
    spend = journal.spend()
    journal.close()
    assert spend.in_flight_calls == 1
    assert spend.unrecorded_estimate_usd == pytest.approx(per_call, rel=1e-9)
    report = inspect_agent(data_dir, "f")
    assert report.runs[-1].spend.in_flight_calls == 1


def test_failed_attempts_are_not_in_flight(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.fail_next(2, status=500)
    run_agent(sample_agents.priced_calls, agent_id="e", data_dir=data_dir, config=_config(fake_llm), n=1)
    spend = spend_report(data_dir, "e").agents["e"]
    assert (spend.calls, spend.in_flight_calls) == (1, 0)


def test_budget_lets_the_crossing_call_finish_then_stops_for_good(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    run_agent(sample_agents.priced_calls, agent_id="probe", data_dir=data_dir, config=_config(fake_llm), n=1)
    one_call = spend_report(data_dir, "probe").agents["probe"].spent_usd
    requests = fake_llm.request_count
    config = _config(fake_llm, budget_usd=one_call * 1.5)  # crossed by the second call
    with pytest.raises(BudgetExceeded, match="budget") as info:
        run_agent(sample_agents.priced_calls, agent_id="b", data_dir=data_dir, config=config, n=5)
    assert info.value.step == "llm#3"
    assert fake_llm.request_count - requests == 2  # the crossing call completed and was recorded
    report = inspect_agent(data_dir, "b")
    assert report.runs[0].run.status == "budget_exceeded" and len(report.runs[0].steps) == 2
    with pytest.raises(BudgetExceeded):  # final: a re-run executes nothing
        run_agent(sample_agents.priced_calls, agent_id="b", data_dir=data_dir, config=config, n=5)
    assert fake_llm.request_count - requests == 2


def test_responses_api_is_durable_and_tool_calls_round_trip(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    config = _config(fake_llm)
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.responses_then_interrupt, agent_id="r", data_dir=data_dir, config=config)
    first = sample_agents.SEEN[0]
    result = run_agent(sample_agents.responses_then_interrupt, agent_id="r", data_dir=data_dir, config=config)
    assert fake_llm.request_count == 2
    replayed = sample_agents.SEEN[1]
    assert isinstance(replayed[0], Response) and replayed == first
    assert result["tool"] == "search_papers" and "query" in result["arguments"]
    assert result["call_id"] == "call_fake-2" and [serial_of(i) for i in result["ids"]] == [1, 2]
    assert "response to: Summarise SQLite" in result["text"]
    spend = spend_report(data_dir, "r").agents["r"]
    assert spend.calls == 2 and spend.input_tokens > 0 and spend.unpriced_calls == 0


@pytest.mark.parametrize("which", ["responses.stream", "chat.parse", "beta"])
def test_calls_that_are_not_durable_yet_are_refused(data_dir: Path, fake_llm: FakeLLMServer, which: str) -> None:
    with pytest.raises(LLMError, match="not durable yet"):
        run_agent(sample_agents.not_durable_calls, agent_id="n", data_dir=data_dir, config=_config(fake_llm),
                  which=which)
    assert fake_llm.request_count == 0


def test_spend_report_over_a_data_dir(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    for agent_id in ("a1", "a2"):
        run_agent(sample_agents.priced_calls, agent_id=agent_id, data_dir=data_dir, config=_config(fake_llm), n=2)
    report = spend_report(data_dir)
    assert sorted(report.agents) == ["a1", "a2"]
    assert report.total.calls == 4
    assert report.total.spent_usd == pytest.approx(_expected_cost(fake_llm), rel=1e-9)


def test_models_outside_the_users_table_are_priced_from_the_catalogue(data_dir: Path,
                                                                       fake_llm: FakeLLMServer) -> None:
    """No table of our own to go stale: a current model is priced by the maintained catalogue, exactly as
    the catalogue prices that usage, and the user's table still wins for a model it names."""
    import genai_prices

    config = RunConfig(llm=LLMConfig(api_key="k", base_url=fake_llm.base_url, backoff_s=0.01))
    run_agent(sample_agents.priced_calls, agent_id="cat", data_dir=data_dir, config=config, n=2, model="gpt-5",
              cached=1)
    spend = spend_report(data_dir, "cat").agents["cat"]
    assert spend.calls == 2 and spend.unpriced_calls == 0
    expected = 0.0
    journal = Journal(open_shard(data_dir, "cat", RunConfig().shard), "cat")
    try:
        for model, input_tokens, cached, output_tokens in journal._conn.execute(
                "SELECT model, input_tokens, cached_tokens, output_tokens FROM llm_ledger WHERE event = 'call'"):
            usage = genai_prices.Usage(input_tokens=input_tokens, cache_read_tokens=cached,
                                       output_tokens=output_tokens)
            expected += float(genai_prices.calc_price(usage, model, provider_id="openai").total_price)
    finally:
        journal.close()
    assert expected > 0 and spend.spent_usd == pytest.approx(expected, rel=1e-9)

    own = RunConfig(llm=LLMConfig(api_key="k", base_url=fake_llm.base_url, backoff_s=0.01,
                                  prices=(("gpt-5", ModelPrice(input=1000.0, output=1000.0)),)))
    run_agent(sample_agents.priced_calls, agent_id="own", data_dir=data_dir, config=own, n=1, model="gpt-5")
    mine = spend_report(data_dir, "own").agents["own"]
    assert mine.spent_usd == pytest.approx((mine.input_tokens + mine.output_tokens) * 1000.0 / 1e6, rel=1e-9)


def test_a_catalogue_that_fails_costs_null_never_the_paid_answer(data_dir: Path, fake_llm: FakeLLMServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalogue prices the call after it was paid for: any error of its own must leave the answer recorded
    (cost NULL), or the call would stay in flight and be paid again."""
    import genai_prices

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("Invalid usage value")

    monkeypatch.setattr(genai_prices, "calc_price", broken)
    config = RunConfig(llm=LLMConfig(api_key="k", base_url=fake_llm.base_url, backoff_s=0.01))
    run_agent(sample_agents.priced_calls, agent_id="nocat", data_dir=data_dir, config=config, n=2,
              model="some-new-model")
    spend = spend_report(data_dir, "nocat").agents["nocat"]
    assert (spend.calls, spend.unpriced_calls, spend.in_flight_calls) == (2, 2, 0)
    assert fake_llm.request_count == 2
