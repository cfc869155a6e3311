"""The OpenAI Agents SDK integration: SDK runs resumed after SIGKILL pay for no completed model call and
re-run no recorded tool; requests are normalised so a resume never mismatches; what cannot be made
durable is refused before anything runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import agents
import openai
import pytest
from openai import NOT_GIVEN, omit
from openai.types.shared import Reasoning

import agentshards
from agentshards import FakeLLMServer, LLMConfig, RunConfig
from agentshards.integrations._openai_agents.requests import normalise, stable_cache_key
from agentshards.testing import ToolCall

import sdk_agents

TESTS_DIR = Path(__file__).resolve().parent
SCRIPT = ([ToolCall("add", {"a": 2, "b": 3}), ToolCall("mul", {"a": 4, "b": 5})],  # two tools in parallel
          [ToolCall("add", {"a": 5, "b": 20})],
          "the answers: {outputs}")
QUESTION = "what are 2+3, 4*5 and 5+20?"

WARM = """
import json, os, sys
import agents, openai, sdk_agents, agentshards  # imported once; every run is a fresh fork of this process
agents.set_tracing_disabled(True)
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the agent process: run_agent reads the crash plan from its environment, as in production
        os.environ.update(job.pop("env"))
        out = agentshards.run_agent(sdk_agents.amath_agent, **job)
        print(json.dumps({"result": out}), flush=True)
        os._exit(0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
"""


class _Agents:
    """A warm parent process that forks one agent process per run: each run is a real process that a crash
    point or a tool SIGKILLs, without paying the SDK's import (3.5 s or more here) every time."""

    def __init__(self, llm: FakeLLMServer) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_", "SDK_TEST_"))}
        env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=llm.base_url, OPENAI_AGENTS_DISABLE_TRACING="1",
                   PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)]))
        self._proc = subprocess.Popen([sys.executable, "-c", WARM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)
        assert self._read() == "ready"

    def _read(self) -> Any:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        assert line, f"the warm parent died (code {self._proc.wait()})"
        return json.loads(line)

    def run(self, data_dir: Path, agent_id: str, count_file: Path, **env: str) -> tuple[int, dict[str, Any] | None]:
        """Run the SDK math agent under run_agent in a forked process: its exit code and result."""
        assert self._proc.stdin is not None
        job = {"agent_id": agent_id, "data_dir": str(data_dir), "question": QUESTION, "count_file": str(count_file),
               "env": env}
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        result = None
        while "exit" not in (message := self._read()):
            result = message["result"]
        assert message["exit"] in (0, -9), message
        return message["exit"], result

    def __enter__(self) -> _Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        """Ends the warm parent: by closing its input after a clean test, by SIGKILL after a failed one."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        if exc[0] is not None:
            self._proc.kill()
        assert self._proc.wait(timeout=30) in (0, -9)


# The SDK's default trace exporter posts to api.openai.com; tests stay on this machine. The switch, not the
# environment variable, because the SDK reads that once, on its first use, whenever that was in this process
# (child processes get OPENAI_AGENTS_DISABLE_TRACING=1).
agents.set_tracing_disabled(True)


def _runs(count_file: Path) -> Counter[str]:
    return Counter(count_file.read_text().splitlines()) if count_file.exists() else Counter()


def test_sigkilled_sdk_run_resumes_without_repeating_calls_or_recorded_tools(tmp_path: Path) -> None:
    # on the Responses API; Chat Completions resumes the same way: see the replay test below
    with FakeLLMServer() as llm, _Agents(llm) as agents_:
        llm.script(*SCRIPT)
        config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=llm.base_url))
        clean = agentshards.run_agent(sdk_agents.amath_agent, agent_id="clean", data_dir=tmp_path / "clean",
                                      config=config, question=QUESTION, count_file=str(tmp_path / "clean-count"))
        clean_requests = llm.request_count
        assert clean_requests == 3

        data, count = tmp_path / "data", tmp_path / "count"
        # 1. killed right after the first model call is recorded (tools asked for, none run yet)
        assert agents_.run(data, "crashy", count, AGENTSHARDS_TEST_CRASH="after_commit@1")[0] == -9
        assert llm.request_count - clean_requests == 1 and not _runs(count)
        # 2. the resumed run replays call 1, runs both tools (recorded), and is killed as call 2 starts
        assert agents_.run(data, "crashy", count, AGENTSHARDS_TEST_CRASH="after_intent@1")[0] == -9
        assert llm.request_count - clean_requests == 1
        assert _runs(count) == {"add 2 3": 1, "mul 4 5": 1}
        # 3. recorded tools are not run again; call 2 is made; the third tool kills its process mid-run
        assert agents_.run(data, "crashy", count, SDK_TEST_SELF_KILL="add 5 20")[0] == -9
        assert llm.request_count - clean_requests == 2
        assert _runs(count) == {"add 2 3": 1, "mul 4 5": 1, "add 5 20": 1}
        # 4. the run finishes: only the tool whose result was never recorded runs again
        code, resumed = agents_.run(data, "crashy", count)
        assert code == 0
        assert _runs(count) == {"add 2 3": 1, "mul 4 5": 1, "add 5 20": 2}
        paid = llm.requests[clean_requests:]
        assert len(paid) == 3, "a completed model call was made again"
        # 5. a finished agent answers from its journal
        assert agentshards.run_agent(sdk_agents.amath_agent, agent_id="crashy", data_dir=data, config=config,
                                     question=QUESTION, count_file=str(count)) == resumed
        assert llm.request_count == clean_requests + 3

    assert resumed == clean
    assert resumed["final_output"] == "the answers: 5, 20, 25"
    steps = [s.name for s in agentshards.inspect_agent(data, "crashy").runs[-1].steps]
    assert sorted(steps) == ["sdk/model-1", "sdk/model-2", "sdk/model-3", "sdk/tool-add-call_fake-4-0",
                             "sdk/tool-add-call_fake-5-0", "sdk/tool-mul-call_fake-4-1"]  # the tools ran in parallel


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
@pytest.mark.parametrize("target", [sdk_agents.stop_once_agent, sdk_agents.astop_once_agent], ids=["sync", "async"])
def test_a_resumed_run_with_a_new_random_prompt_cache_key_replays(tmp_path: Path, fake_llm: FakeLLMServer,
                                                                  monkeypatch: pytest.MonkeyPatch, api: str,
                                                                  target: Any) -> None:
    # the SDK draws "agents-sdk:run:<random>" per Runner.run when it believes it talks to OpenAI
    for module in sdk_agents.OFFICIAL_CHECKS:
        monkeypatch.setattr(f"{module}.is_official_openai_client", lambda client: True)
    fake_llm.script(*SCRIPT)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    kwargs: dict[str, Any] = dict(agent_id="keyed", data_dir=tmp_path / "data", config=config, question=QUESTION,
                                  count_file=str(tmp_path / "count"), stop_file=str(tmp_path / "stop"), api=api)
    with pytest.raises(sdk_agents.Interrupted):
        agentshards.run_agent(target, **kwargs)
    assert fake_llm.request_count == 3
    out = agentshards.run_agent(target, **kwargs)  # replays all: a new random key

    assert out["final_output"] == "the answers: 5, 20, 25"
    assert fake_llm.request_count == 3
    assert Counter((tmp_path / "count").read_text().splitlines()) == {"add 2 3": 1, "mul 4 5": 1, "add 5 20": 1}
    run_id = agentshards.inspect_agent(tmp_path / "data", "keyed").runs[-1].run.id
    keys = {r.body.get("prompt_cache_key") for r in fake_llm.requests}
    assert keys == {stable_cache_key("keyed", run_id)}  # one key per agentshards run, sent with every call


def test_agents_as_tools_handoffs_and_guardrails_journal_every_model_call_and_tool(
        tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.script([ToolCall("calculator", {"input": "2+3"})], [ToolCall("transfer_to_reporter", {})], "unused",
                    instructions=sdk_agents.ORCHESTRATOR)
    fake_llm.script([ToolCall("add", {"a": 2, "b": 3})], "calc: {outputs}", instructions=sdk_agents.CALCULATOR)
    fake_llm.script("report: {outputs}", instructions=sdk_agents.REPORTER)
    fake_llm.script("safe", instructions=sdk_agents.CHECKER)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    kwargs: dict[str, Any] = dict(agent_id="team", data_dir=tmp_path / "data", config=config, question="2+3?",
                                  count_file=str(tmp_path / "count"), stop_file=str(tmp_path / "stop"))
    with pytest.raises(sdk_agents.Interrupted):
        agentshards.run_agent(sdk_agents.ateam_agent, **kwargs)
    paid = fake_llm.request_count
    out = agentshards.run_agent(sdk_agents.ateam_agent, **kwargs)  # replays every step

    assert fake_llm.request_count == paid == 6  # orchestrator 2, guardrail's agent 1, calculator 2, reporter 1
    assert (tmp_path / "count").read_text().splitlines() == ["add 2 3"]
    assert out["last_agent"] == "reporter" and out["final_output"].startswith("report: calc: 5, ")
    steps = {s.name for s in agentshards.inspect_agent(tmp_path / "data", "team").runs[-1].steps}
    [tool_call] = {name.split("/")[1] for name in steps if name.count("/") == 2 and "guardrail" not in name}
    assert steps == {"sdk/model-1", "sdk/model-2", "sdk/model-3", "sdk/guardrail-checked/model-1",
                     f"sdk/{tool_call}/model-1", f"sdk/{tool_call}/model-2",
                     *{n for n in steps if n.startswith(f"sdk/{tool_call}/tool-add-call_fake-")}}
    assert len(steps) == 7


def test_two_sdk_runs_in_one_agent_function_have_names_of_their_own(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.script(*SCRIPT)
    fake_llm.script("safe", instructions=sdk_agents.CHECKER)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    kwargs: dict[str, Any] = dict(agent_id="twice", data_dir=tmp_path / "data", config=config, question=QUESTION,
                                  count_file=str(tmp_path / "count"), stop_file=str(tmp_path / "stop"))
    with pytest.raises(sdk_agents.Interrupted):
        agentshards.run_agent(sdk_agents.atwice_agent, **kwargs)
    first, second = agentshards.run_agent(sdk_agents.atwice_agent, **kwargs)

    assert first["final_output"] == second["final_output"] == "the answers: 5, 20, 25"
    assert fake_llm.request_count == 7  # 3 + 3 + the guardrail's agent, none repeated by the replay
    models = sorted(s.name for s in agentshards.inspect_agent(tmp_path / "data", "twice").runs[-1].steps
                    if "/tool-" not in s.name)
    assert models == ["sdk/model-1", "sdk/model-2", "sdk/model-3", "sdk/run-2/guardrail-checked/model-1",
                      "sdk/run-2/model-1", "sdk/run-2/model-2", "sdk/run-2/model-3"]


def test_hosted_tools_go_with_the_model_call(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.script(*SCRIPT)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    out = agentshards.run_agent(sdk_agents.ahosted_agent, agent_id="hosted", data_dir=tmp_path, config=config,
                                question=QUESTION, count_file=str(tmp_path / "count"))
    assert out["final_output"] == "the answers: 5, 20, 25"
    assert all(r.body["tools"][0]["type"] == "web_search" for r in fake_llm.requests)  # sent, run by the provider
    assert len(agentshards.inspect_agent(tmp_path, "hosted").runs[-1].steps) == 6  # 3 model calls, 3 tool runs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", [sdk_agents.math_agent, sdk_agents.amath_agent], ids=["sync", "async"])
def test_a_dozen_parallel_sync_tools(tmp_path: Path, fake_llm: FakeLLMServer, target: Any) -> None:
    """The SDK runs a sync tool in the default thread pool; a sync-handle step waiting for it must not take
    one of those threads, or a dozen parallel calls would wait for each other forever."""
    calls = [ToolCall("add", {"a": i, "b": 1}) for i in range(12)]
    fake_llm.script(calls, "sums: {outputs}")
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    out = agentshards.run_agent(target, agent_id="wide", data_dir=tmp_path, config=config,
                                question=QUESTION, count_file=str(tmp_path / "count"))
    assert out["final_output"] == "sums: " + ", ".join(str(i + 1) for i in range(12))


@pytest.mark.parametrize("target", [sdk_agents.keyed_agent, sdk_agents.akeyed_agent], ids=["sync", "async"])
def test_a_tool_gets_its_steps_idempotency_key(tmp_path: Path, fake_llm: FakeLLMServer, target: Any) -> None:
    fake_llm.script([ToolCall("ticket", {"title": "disk full"})], "{outputs}")
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    out = agentshards.run_agent(target, agent_id="keyed", data_dir=tmp_path, config=config,
                                count_file=str(tmp_path / "count"))
    title, _, key = out.partition(": ")
    assert title == "disk full" and str(uuid.UUID(key)) == key  # the same key on every re-run of the step


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_a_streamed_run_is_durable_and_replays(tmp_path: Path, fake_llm: FakeLLMServer, api: str) -> None:
    fake_llm.script(*SCRIPT)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    kwargs: dict[str, Any] = dict(agent_id="streamed", data_dir=tmp_path / "data", config=config, question=QUESTION,
                                  count_file=str(tmp_path / "count"), stop_file=str(tmp_path / "stop"), api=api)
    with pytest.raises(sdk_agents.Interrupted):
        agentshards.run_agent(sdk_agents.astreamed_agent, **kwargs)
    assert fake_llm.request_count == 3 and all(r.body.get("stream") is True for r in fake_llm.requests)
    out = agentshards.run_agent(sdk_agents.astreamed_agent, **kwargs)  # replayed event for event

    assert out["final_output"] == "the answers: 5, 20, 25" and out["raw_events"]
    assert fake_llm.request_count == 3
    assert Counter((tmp_path / "count").read_text().splitlines()) == {"add 2 3": 1, "mul 4 5": 1, "add 5 20": 1}


def test_a_tool_that_timed_out_is_recorded_as_timed_out(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """The model was told the tool timed out; a resumed run must tell it the same, not run the tool again
    (it might answer this time, and the next model call would no longer match its record)."""
    fake_llm.script(*SCRIPT)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    kwargs: dict[str, Any] = dict(agent_id="slow", data_dir=tmp_path / "data", config=config, question=QUESTION,
                                  count_file=str(tmp_path / "count"), stop_file=str(tmp_path / "stop"))
    with pytest.raises(sdk_agents.Interrupted):
        agentshards.run_agent(sdk_agents.aslow_once_agent, **kwargs)
    first = Counter((tmp_path / "count").read_text().splitlines())
    out = agentshards.run_agent(sdk_agents.aslow_once_agent, **kwargs)

    assert out["final_output"] == "the answers: Tool 'add' timed out after 0.2 seconds., 20, 25"
    assert Counter((tmp_path / "count").read_text().splitlines()) == first == {"add 2 3": 1, "mul 4 5": 1,
                                                                               "add 5 20": 1}
    assert fake_llm.request_count == 3


def test_the_facade_is_the_one_retry_layer(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """An SDK agent that asks the SDK to retry gets only agentshards' retries: each attempt has its row in
    the journal; SDK retries would re-send behind it."""
    fake_llm.script(*SCRIPT)
    fake_llm.fail_next(2, status=500)
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url, max_attempts=2, backoff_s=0.01))
    with pytest.raises(openai.InternalServerError):  # the facade gave up: the run stays open for a re-run
        agentshards.run_agent(sdk_agents.aretrying_agent, agent_id="retry", data_dir=tmp_path, config=config,
                              question=QUESTION, count_file=str(tmp_path / "count"))
    assert fake_llm.request_count == 2  # the facade's two attempts, no SDK retry on top
    assert len(agentshards.inspect_agent(tmp_path, "retry").runs[-1].attempts) == 2


def test_the_docs_example_runs_offline_and_its_second_run_is_free(tmp_path: Path) -> None:
    text = (TESTS_DIR.parent / "docs" / "integrations.md").read_text()
    [example] = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    (tmp_path / "sdk_math.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTSHARDS_"))}
    env.update(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="must-not-be-used",
               PYTHONPATH=str(TESTS_DIR.parent))

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "sdk_math.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.splitlines()

    assert run() == ["the add tool runs: 2 + 3", "2 + 3 = 5", "LLM requests made by this run: 2"]
    assert run() == ["2 + 3 = 5", "LLM requests made by this run: 0"]


def test_normalise_drops_sentinels_and_sdk_version_keeps_callers_headers() -> None:
    request = {"model": "m", "input": "hi", "temperature": omit, "top_p": NOT_GIVEN, "extra_query": None,
               "extra_headers": {"User-Agent": "Agents/Python 0.24.0", "X-Team": "a"},
               "include": ["reasoning.encrypted_content", "file_search_call.results"],
               "prompt_cache_key": "agents-sdk:run:0123", "reasoning": Reasoning(effort="low")}
    out = normalise(request, cache_key="stable")
    assert out == {"model": "m", "input": "hi", "extra_headers": {"X-Team": "a"},
                   "include": ["file_search_call.results", "reasoning.encrypted_content"],
                   "prompt_cache_key": "stable", "reasoning": {"effort": "low"}}
    assert "extra_headers" not in normalise({"extra_headers": {"User-Agent": "Agents/Python 1.0"}}, cache_key="k")
    assert normalise({"prompt_cache_key": "mine"}, cache_key="k") == {"prompt_cache_key": "mine"}


@pytest.mark.parametrize(("case", "feature", "named"), [
    ("session", "session", "session="),
    ("conversation_id", "conversation_id", "conversation_id="),
    ("approval", "FunctionTool", "'pay'"),
    ("run_state", "run_state", "RunState"),
    ("local_shell", "LocalShellTool", "'local_shell'"),
    ("hosted_mcp", "HostedMCPTool", "'hosted_mcp'"),
    ("model_object", "model", "OpenAIResponsesModel"),
    ("model_provider", "model_provider", "Provider"),
    ("litellm", "model_provider", "'litellm/anthropic/claude'"),
    ("streamed", "streaming", "run_streamed needs the async handle"),
])
def test_what_cannot_be_durable_is_refused_before_any_call(tmp_path: Path, fake_llm: FakeLLMServer, case: str,
                                                           feature: str, named: str) -> None:
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url))
    refused = agentshards.run_agent(sdk_agents.refused_agent, agent_id="refused", data_dir=tmp_path, config=config,
                                    case=case)
    assert refused["type"] == "NotDurable" and refused["feature"] == feature
    assert named in refused["message"] and "(hint: " in refused["message"] and "agent 'refused'" in refused["message"]
    assert fake_llm.request_count == 0
    assert agentshards.inspect_agent(tmp_path, "refused").runs[-1].steps == []  # refused before any step
