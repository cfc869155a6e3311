"""Streamed LLM answers: the fake server's streams, and ``stream=True`` on the durable facade."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from agentshards import FakeLLMServer, LLMConfig, LLMError, RunConfig, inspect_agent, run_agent
from agentshards._base.prices import catalogue_cost
from agentshards._core.stream import chat_completion_of
from agentshards.testing._fakellm import Fault, serial_of
from agentshards.testing._fakestream import pieces

import stream_agents
from agent_process import TESTS_DIR, wait_ready

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
RESPONSE_TOOLS = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]


def _client(server: FakeLLMServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=server.base_url, max_retries=0)


# -- the fake server --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tools", [None, TOOLS])
def test_fake_server_streams_the_chat_answer_it_would_send_whole(fake_llm: FakeLLMServer,
                                                                 tools: list[Any] | None) -> None:
    client = _client(fake_llm)
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    msgs: Any = [{"role": "user", "content": "stream me a few words"}]
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, **extra)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}, **extra))
    assert len(chunks) > 4 and {serial_of(c.id) for c in chunks} == {2}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    assembled = state.get_final_completion().choices[0]
    assert assembled.finish_reason == whole.choices[0].finish_reason == ("tool_calls" if tools else "stop")
    assert assembled.message.content == whole.choices[0].message.content
    if tools:
        assert len([c for c in chunks if c.choices and c.choices[0].delta.tool_calls]) > 2  # argument deltas
        streamed_call, whole_call = assembled.message.tool_calls[0], whole.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert (streamed_call.function.arguments, streamed_call.function.name) == (  # type: ignore[union-attr]
            whole_call.function.arguments, whole_call.function.name)  # type: ignore[union-attr]
    ours = chat_completion_of([c.model_dump(mode="json", exclude_unset=True) for c in chunks])
    sdk = state.get_final_completion().model_dump(mode="json", exclude_unset=True)
    for choice in sdk["choices"]:  # what the SDK's helper adds to the API's shape
        choice["message"].pop("parsed")
        for call in choice["message"].get("tool_calls") or []:
            call.pop("index"), call["function"].pop("parsed_arguments")
    assert ChatCompletion.model_validate(ours) == ChatCompletion.model_validate(sdk)  # the facade's assembly agrees
    no_usage = list(client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True, **extra))
    assert no_usage[-1].choices[0].finish_reason is not None and all(c.usage is None for c in no_usage)


@pytest.mark.parametrize("tools", [None, RESPONSE_TOOLS])
def test_fake_server_streams_response_events_the_client_parses(fake_llm: FakeLLMServer,
                                                               tools: list[Any] | None) -> None:
    client = _client(fake_llm)
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    whole = client.responses.create(model="m", input="stream me a few words", **extra)
    events = list(client.responses.create(model="m", input="stream me a few words", stream=True, **extra))
    item = whole.output[0]
    middle = (["response.function_call_arguments.delta"] * len(pieces(item.arguments))  # type: ignore[union-attr]
              + ["response.function_call_arguments.done"] if tools
              else ["response.content_part.added"] + ["response.output_text.delta"] * len(pieces(whole.output_text))
              + ["response.output_text.done", "response.content_part.done"])
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                        *middle, "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output == [e.item for e in events if e.type == "response.output_item.done"]
    assert (final.output_text, final.usage) == (whole.output_text, whole.usage)
    assert final.output[0].type == whole.output[0].type == ("function_call" if tools else "message")
    with client.responses.stream(model="m", input="stream me a few words", **extra) as helper:
        assert helper.get_final_response().output_text == whole.output_text  # openai's own accumulator agrees


def test_fake_server_cuts_a_stream_after_k_events(fake_llm: FakeLLMServer) -> None:
    client = _client(fake_llm)
    fake_llm.inject(Fault(cut_after=3))
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c d"}],
                                                    stream=True):
            seen.append(chunk)
    assert len(seen) == 3
    assert len(list(client.responses.create(model="m", input="x", stream=True))) > 3  # the fault was used up


def test_fake_server_pauses_a_stream_until_resumed(fake_llm: FakeLLMServer) -> None:
    client = _client(fake_llm)
    fake_llm.inject(Fault(pause_after=2))
    stream = client.responses.create(model="m", input="pause here", stream=True)
    first = [next(stream), next(stream)]
    assert fake_llm.wait_paused(5.0)
    fake_llm.resume()
    rest = list(stream)
    assert [e.type for e in first] == ["response.created", "response.in_progress"]
    assert rest[-1].type == "response.completed"


# -- stream=True on the durable facade --------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _reset() -> None:
    stream_agents.SEEN.clear()
    stream_agents.INTERRUPTED.clear()


@pytest.mark.parametrize(("endpoint", "tools"), [("chat", False), ("chat", True), ("responses", False),
                                                 ("responses", True)])
def test_replay_streams_the_same_chunks_as_the_first_run_without_a_request(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, endpoint: str, tools: bool) -> None:
    with pytest.raises(KeyboardInterrupt):  # the first execution streams, then stops before the run ends
        run_agent(stream_agents.stream_once, agent_id="s", data_dir=data_dir, config=run_config,
                  endpoint=endpoint, tools=tools)
    no_client = RunConfig(llm=LLMConfig(api_key=None, base_url="http://127.0.0.1:9/v1"))  # a request would fail
    result = run_agent(stream_agents.stream_once, agent_id="s", data_dir=data_dir, config=no_client,
                       endpoint=endpoint, tools=tools)
    assert fake_llm.request_count == 1
    first, replay = stream_agents.SEEN
    assert len(first["chunks"]) > 5
    assert [type(c) for c in replay["chunks"]] == [type(c) for c in first["chunks"]]
    for a, b in zip(first["chunks"], replay["chunks"], strict=True):
        assert a == b
    assert replay["final"] == first["final"] and serial_of(result) == 1
    if endpoint == "chat":
        assert isinstance(first["chunks"][0], ChatCompletionChunk) and isinstance(first["final"], ChatCompletion)
        message = first["final"].choices[0].message
        text = "".join(c.choices[0].delta.content or "" for c in first["chunks"] if c.choices)
        assert (message.tool_calls[0].function.name if tools else message.content) == (  # type: ignore[index]
            "lookup" if tools else text)
    else:
        assert first["chunks"][-1].type == "response.completed"
        assert first["final"] == first["chunks"][-1].response
    step, = inspect_agent(data_dir, "s").runs[0].steps
    assert step.kind == "llm" and step.outcome == "ok"


def test_the_ledger_has_the_cost_from_the_streamed_usage(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    texts = run_agent(stream_agents.stream_calls, agent_id="c", data_dir=data_dir, config=run_config, n=2)
    assert [r.body["stream_options"] for r in fake_llm.requests] == [{"include_usage": True}] * 2
    usages = []
    for request, text in zip(fake_llm.requests, texts, strict=True):
        prompt = len(request.body["messages"][0]["content"].split()) + 4  # the fake server's token counts
        usages.append((prompt, len(text.split())))
    spend = inspect_agent(data_dir, "c").runs[0].spend
    assert (spend.calls, spend.unpriced_calls, spend.in_flight_calls) == (2, 0, 0)
    assert (spend.input_tokens, spend.output_tokens) == tuple(map(sum, zip(*usages, strict=True)))
    expected = sum(catalogue_cost("gpt-4o-mini-2024-07-18", i, 0, o) or 0.0 for i, o in usages)
    assert expected > 0 and spend.spent_usd == pytest.approx(expected, rel=1e-9)


def test_a_caller_that_turns_the_usage_chunk_off_is_obeyed(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    text = run_agent(stream_agents.stream_without_usage, agent_id="n", data_dir=data_dir, config=run_config)
    assert text.endswith("answer to: no usage")
    assert fake_llm.requests[0].body["stream_options"] == {"include_usage": False}
    spend = inspect_agent(data_dir, "n").runs[0].spend
    assert (spend.calls, spend.unpriced_calls, spend.in_flight_calls) == (1, 1, 0)


def test_a_stream_broken_mid_way_is_not_recorded_and_a_resume_sends_it_once(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.inject(Fault())  # the first call streams whole
    fake_llm.inject(Fault(cut_after=4))  # the second breaks after four chunks
    with pytest.raises(openai.APIConnectionError):
        run_agent(stream_agents.stream_calls, agent_id="b", data_dir=data_dir, config=run_config, n=3)
    assert fake_llm.request_count == 2  # a break after the first chunk is not retried behind the caller's back
    run = inspect_agent(data_dir, "b").runs[0]
    assert run.run.status == "running" and [s.name for s in run.steps] == ["llm#1"]
    assert [a.step_name for a in run.in_flight] == ["llm#2"]
    texts = run_agent(stream_agents.stream_calls, agent_id="b", data_dir=data_dir, config=run_config, n=3)
    prompts = [r.body["messages"][0]["content"] for r in fake_llm.requests]
    assert prompts == ["stream 0 of 3", "stream 1 of 3", "stream 1 of 3", "stream 2 of 3"]
    assert len(texts) == 3 and inspect_agent(data_dir, "b").runs[0].in_flight == []


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_stream_that_ends_short_without_an_error_is_not_recorded(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, endpoint: str) -> None:
    """No finish reason and usage chunk (chat) or no ``response.completed`` (Responses): not a whole answer."""
    fake_llm.inject(Fault(end_after=4))
    stream_agents.INTERRUPTED.append("t")  # were the short stream taken for whole, the run would just succeed
    with pytest.raises(LLMError, match="ended before its final chunk"):
        run_agent(stream_agents.stream_once, agent_id="t", data_dir=data_dir, config=run_config, endpoint=endpoint)
    run = inspect_agent(data_dir, "t").runs[0]
    assert run.steps == [] and [a.step_name for a in run.in_flight] == ["llm#1"] and fake_llm.request_count == 1
    assert len(stream_agents.SEEN) == 0


def test_a_stream_that_fails_before_its_first_chunk_is_retried_in_the_step(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.inject(Fault(cut_after=0))  # headers, then the connection closes
    fake_llm.fail_next(1, status=503)
    texts = run_agent(stream_agents.stream_calls, agent_id="f", data_dir=data_dir, config=run_config, n=1)
    assert fake_llm.request_count == 3 and texts[0].endswith("stream 0 of 1")


def test_a_rejected_stream_is_recorded_as_rejected_and_replayed_without_a_request(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.fail_next(1, status=400, code="bad_thing")
    with pytest.raises(KeyboardInterrupt):
        run_agent(stream_agents.rejected, agent_id="r", data_dir=data_dir, config=run_config)
    assert run_agent(stream_agents.rejected, agent_id="r", data_dir=data_dir, config=run_config) == 2
    assert stream_agents.SEEN == [{"status": 400}, {"status": 400}] and fake_llm.request_count == 1
    step, = inspect_agent(data_dir, "r").runs[0].steps
    assert step.outcome == "error"


@pytest.mark.parametrize("how", ["with", "next_step", "run_end"])
def test_a_consumer_that_stops_early_gets_the_rest_read_and_recorded(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, how: str) -> None:
    """The choice: stopping early (leaving the ``with`` block, or just breaking out of the loop) reads the rest
    of the answer and records it before the next step or at the run's end. The ledger stays exact, and a replay
    shows the consumer the same first chunks, so it stops at the same place."""
    if how == "run_end":
        run_agent(stream_agents.stop_early, agent_id="e", data_dir=data_dir, config=run_config, how=how)
    else:
        with pytest.raises(KeyboardInterrupt):
            run_agent(stream_agents.stop_early, agent_id="e", data_dir=data_dir, config=run_config, how=how)
    run = inspect_agent(data_dir, "e").runs[0]
    assert run.steps[0].name == "llm#1" and run.in_flight == [] and run.spend.calls == 1
    recorded = json.loads(run.steps[0].output_json)
    assert len(recorded["events"]) > 5 and recorded["events"][-1]["usage"] is not None  # read to its end
    assert recorded["shared"]["id"] == "chatcmpl-fake-1" and "id" not in recorded["events"][0]  # stored once
    assert recorded["final"]["choices"][0]["message"]["content"].endswith("a long answer, please")
    if how != "run_end":
        assert [s.name for s in run.steps] == ["llm#1", "after"]
        run_agent(stream_agents.stop_early, agent_id="e", data_dir=data_dir, config=run_config, how=how)
        first, replay = stream_agents.SEEN
        assert first["chunks"] == replay["chunks"] and len(first["chunks"]) == 2
    assert fake_llm.request_count == 1


CHILD = """
import json, os, sys
import openai  # preloaded so the kill lands in the stream, not in an import
import agentshards, stream_agents
config = agentshards.RunConfig(llm=agentshards.LLMConfig(api_key="k", base_url=os.environ["FAKE_LLM_URL"]))
print("ready", flush=True)
result = agentshards.run_agent(stream_agents.stream_calls, agent_id="k", data_dir=sys.argv[1], n=3, config=config)
print(json.dumps(result), flush=True)
"""


def test_sigkill_mid_stream_then_resume_resends_only_that_call(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.inject(Fault())
    fake_llm.inject(Fault(pause_after=3))  # the second call stops mid-stream until the child is dead
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], stdout=subprocess.PIPE, text=True,
                             env={**env, "FAKE_LLM_URL": fake_llm.base_url,
                                  "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])})
    try:
        wait_ready(child)
        assert fake_llm.wait_paused(30.0), "the second stream never started"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    fake_llm.resume()  # the paused handler writes to a dead client and ends
    run = inspect_agent(data_dir, "k").runs[0]
    assert [s.name for s in run.steps] == ["llm#1"] and [a.step_name for a in run.in_flight] == ["llm#2"]
    texts = run_agent(stream_agents.stream_calls, agent_id="k", data_dir=data_dir, config=run_config, n=3)
    prompts = [r.body["messages"][0]["content"] for r in fake_llm.requests]
    assert prompts == ["stream 0 of 3", "stream 1 of 3", "stream 1 of 3", "stream 2 of 3"]
    assert [t.split("] ", 1)[1] for t in texts] == [f"answer to: stream {i} of 3" for i in range(3)]


def test_a_replicated_stream_completes_once_the_replica_has_it(tmp_path: Path, run_config: RunConfig) -> None:
    """Real Litestream, a directory replica."""
    from agentshards import restore_agent

    replica = str(tmp_path / "replica")
    text = run_agent(stream_agents.replicated_stream, agent_id="rs", data_dir=tmp_path / "n1", replica=replica,
                     config=run_config)
    step, = inspect_agent(tmp_path / "n1", "rs").runs[0].steps
    assert text.endswith("response to: kept") and step.replicated_at is not None
    restore_agent("rs", tmp_path / "n2", replica)
    assert json.loads(inspect_agent(tmp_path / "n2", "rs").runs[0].steps[0].output_json)["final"]["status"] == (
        "completed")


def test_inspect_shows_a_streamed_answer_as_its_text(data_dir: Path, run_config: RunConfig) -> None:
    from click.testing import CliRunner

    from agentshards._cli.main import main

    texts = run_agent(stream_agents.stream_calls, agent_id="i", data_dir=data_dir, config=run_config, n=1)
    shown = CliRunner().invoke(main, ["inspect", "i", "--data-dir", str(data_dir)])
    assert shown.exit_code == 0 and texts[0] in shown.output and '"final"' not in shown.output


# -- async agents -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_async_replay_streams_the_same_chunks_without_a_request(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, endpoint: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_agent(stream_agents.astream_once, agent_id="a", data_dir=data_dir, config=run_config, endpoint=endpoint)
    no_client = RunConfig(llm=LLMConfig(api_key=None, base_url="http://127.0.0.1:9/v1"))
    result = run_agent(stream_agents.astream_once, agent_id="a", data_dir=data_dir, config=no_client,
                       endpoint=endpoint)
    first, replay = stream_agents.SEEN
    assert len(first["chunks"]) > 5 and fake_llm.request_count == 1 and serial_of(result) == 1
    assert [type(c) for c in replay["chunks"]] == [type(c) for c in first["chunks"]]
    assert replay["chunks"] == first["chunks"] and replay["final"] == first["final"]
    spend = inspect_agent(data_dir, "a").runs[0].spend
    assert (spend.calls, spend.unpriced_calls, spend.replayed_calls) == (1, 0, 1) and spend.spent_usd > 0


def test_async_stream_broken_mid_way_is_not_recorded_and_a_resume_sends_it_once(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.inject(Fault())
    fake_llm.inject(Fault(cut_after=4))
    with pytest.raises(openai.APIConnectionError):
        run_agent(stream_agents.astream_calls, agent_id="ab", data_dir=data_dir, config=run_config, n=3)
    run = inspect_agent(data_dir, "ab").runs[0]
    assert [s.name for s in run.steps] == ["llm#1"] and [a.step_name for a in run.in_flight] == ["llm#2"]
    texts = run_agent(stream_agents.astream_calls, agent_id="ab", data_dir=data_dir, config=run_config, n=3)
    prompts = [r.body["messages"][0]["content"] for r in fake_llm.requests]
    assert prompts == ["stream 0 of 3", "stream 1 of 3", "stream 1 of 3", "stream 2 of 3"] and len(texts) == 3


@pytest.mark.parametrize("how", ["with", "next_step", "run_end"])
def test_async_consumer_that_stops_early_gets_the_rest_read_and_recorded(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig, how: str) -> None:
    if how == "run_end":
        run_agent(stream_agents.astop_early, agent_id="ae", data_dir=data_dir, config=run_config, how=how)
    else:
        with pytest.raises(KeyboardInterrupt):
            run_agent(stream_agents.astop_early, agent_id="ae", data_dir=data_dir, config=run_config, how=how)
    run = inspect_agent(data_dir, "ae").runs[0]
    assert [s.name for s in run.steps] == ["llm#1"] + ([] if how == "run_end" else ["after"]) and not run.in_flight
    assert json.loads(run.steps[0].output_json)["events"][-1]["usage"] is not None  # read to its end
    if how == "run_end":
        return
    run_agent(stream_agents.astop_early, agent_id="ae", data_dir=data_dir, config=run_config, how=how)
    first, replay = stream_agents.SEEN
    assert first["chunks"] == replay["chunks"] and len(first["chunks"]) == 2 and fake_llm.request_count == 1


def test_an_async_replicated_stream_completes_once_the_replica_has_it(tmp_path: Path, run_config: RunConfig) -> None:
    text = run_agent(stream_agents.areplicated_stream, agent_id="ars", data_dir=tmp_path / "n1",
                     replica=str(tmp_path / "replica"), config=run_config)
    step, = inspect_agent(tmp_path / "n1", "ars").runs[0].steps
    assert text.endswith("answer to: kept") and step.replicated_at is not None
