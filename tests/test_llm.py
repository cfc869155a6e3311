"""Durable chat completions against the fake server over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from agentshards import (
    ConcurrentStepError,
    FakeLLMServer,
    LLMConfig,
    LLMError,
    RunConfig,
    inspect_agent,
    run_agent,
)
from agentshards.testing._fakellm import serial_of

import sample_agents


def test_calls_are_made_once_and_replayed_as_real_objects(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    first = run_agent(sample_agents.chat_calls, agent_id="l", data_dir=data_dir, config=run_config, n=3)
    assert fake_llm.request_count == 3
    assert [serial_of(r["id"]) for r in first] == [1, 2, 3]
    assert [r["i"] for r in first] == [0, 1, 2]
    steps = inspect_agent(data_dir, "l").runs[0].steps
    assert [(s.name, s.kind) for s in steps] == [("llm#1", "llm"), ("llm#2", "llm"), ("llm#3", "llm")]
    stored = ChatCompletion.model_validate_json(steps[0].output_json)
    assert stored.usage is not None and stored.usage.total_tokens > 0
    again = run_agent(sample_agents.chat_calls, agent_id="l", data_dir=data_dir, config=run_config, n=3)
    assert again == first and fake_llm.request_count == 3


def test_first_run_and_replay_return_equal_chat_completions(data_dir: Path, run_config: RunConfig) -> None:
    seen: list[Any] = []
    sample_agents.SEEN = seen
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.llm_then_interrupt, agent_id="e", data_dir=data_dir, config=run_config)
    run_agent(sample_agents.llm_then_interrupt, agent_id="e", data_dir=data_dir, config=run_config)
    assert isinstance(seen[0], ChatCompletion)
    assert seen[0] == seen[1]


def test_replay_needs_no_api_key(data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    first = run_agent(sample_agents.chat_calls, agent_id="k", data_dir=data_dir, config=run_config, n=2)
    no_key = RunConfig(llm=LLMConfig(api_key=None, base_url="http://127.0.0.1:9/v1"))
    assert run_agent(sample_agents.chat_calls, agent_id="k", data_dir=data_dir, config=no_key, n=2) == first
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        run_agent(sample_agents.chat_calls, agent_id="k2", data_dir=data_dir, config=no_key, n=2)


def test_transient_errors_are_retried_inside_one_step(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    fake_llm.fail_next(2, status=500)
    result = run_agent(sample_agents.chat_calls, agent_id="r", data_dir=data_dir, config=run_config, n=1)
    assert fake_llm.request_count == 3  # two 500s, then success; the client itself did not retry
    assert serial_of(result[0]["id"]) == 3


def test_auth_errors_are_not_retried_and_leave_the_run_open(
        data_dir: Path, fake_llm: FakeLLMServer, run_config: RunConfig) -> None:
    import openai

    fake_llm.fail_next(1, status=401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        run_agent(sample_agents.chat_calls, agent_id="u", data_dir=data_dir, config=run_config, n=1)
    assert fake_llm.request_count == 1
    assert inspect_agent(data_dir, "u").runs[0].run.status == "running"
    run_agent(sample_agents.chat_calls, agent_id="u", data_dir=data_dir, config=run_config, n=1)
    assert fake_llm.request_count == 2


def test_non_durable_calls_are_refused(data_dir: Path, run_config: RunConfig) -> None:
    with pytest.raises(LLMError, match="embeddings is not durable"):
        run_agent(sample_agents.embeddings_call, agent_id="s2", data_dir=data_dir, config=run_config)


def test_named_llm_calls(data_dir: Path, run_config: RunConfig) -> None:
    run_agent(sample_agents.named_llm_calls, agent_id="n", data_dir=data_dir, config=run_config)
    assert [s.name for s in inspect_agent(data_dir, "n").runs[0].steps] == ["plan", "llm#1", "plan#2"]


def test_overlapping_unnamed_llm_calls_are_refused(data_dir: Path) -> None:
    with FakeLLMServer(delay_s=0.3) as slow:
        config = RunConfig(llm=LLMConfig(api_key="k", base_url=slow.base_url))
        with pytest.raises(ConcurrentStepError, match="llm#2"):
            run_agent(sample_agents.parallel_llm_calls, agent_id="p", data_dir=data_dir, config=config)
        assert slow.request_count == 1


def test_fake_server_is_deterministic_and_counts(fake_llm: FakeLLMServer) -> None:
    """The answer is a function of the request alone (another server, another moment: the same text; another
    prompt: another text); the serial and the log count every request."""
    import openai

    client = openai.OpenAI(api_key="k", base_url=fake_llm.base_url, max_retries=0)
    msgs = [{"role": "user", "content": "hello"}]
    a = client.chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
    b = client.chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
    other = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "bye"}])
    assert a.choices[0].message.content == b.choices[0].message.content
    assert other.choices[0].message.content != a.choices[0].message.content
    assert (serial_of(a.id), serial_of(b.id), serial_of(other.id)) == (1, 2, 3)
    assert fake_llm.request_count == 3
    assert [r.body["messages"] for r in fake_llm.requests] == [msgs, msgs, [{"role": "user", "content": "bye"}]]
    with FakeLLMServer() as second:
        fresh = openai.OpenAI(api_key="k", base_url=second.base_url, max_retries=0)
        c = fresh.chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
        assert c.choices[0].message.content == a.choices[0].message.content
        assert serial_of(c.id) == 1 and second.request_count == 1


def test_fake_server_ignores_requests_cut_off_mid_send(fake_llm: FakeLLMServer) -> None:
    """A client SIGKILLed while sending never made a request: no serial, no log entry."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(fake_llm.base_url)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{\"model\": \"m\", \"mess")
    import openai

    client = openai.OpenAI(api_key="k", base_url=fake_llm.base_url, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=None)  # type: ignore[arg-type]
    done = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert serial_of(done.id) == 1 and fake_llm.request_count == 1
