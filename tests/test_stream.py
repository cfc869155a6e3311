"""Streamed LLM answers: the fake server's streams, and ``stream=True`` on the durable facade."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from agentshards import FakeLLMServer
from agentshards.testing._fakellm import Fault, serial_of
from agentshards.testing._fakestream import pieces

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
