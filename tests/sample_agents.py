"""Agent functions the tests run, importable as ``sample_agents:<name>`` (tests/ is on sys.path)."""

from __future__ import annotations

import os
import threading
from typing import Any

import agentshards

CALLS: list[str] = []  # records real executions of plain steps in this process


def record_call(tag: str, value: Any = None) -> Any:
    CALLS.append(tag)
    return value if value is not None else {"tag": tag, "pid": os.getpid()}


def chat_calls(agent: agentshards.Agent, n: int) -> list[dict[str, Any]]:
    """n sequential chat calls, each prompt naming its index; returns id and content of each."""
    out = []
    for i in range(n):
        completion = agent.llm.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": f"call {i} of {n}"}], user=agent.agent_id)
        out.append({"i": i, "id": completion.id, "content": completion.choices[0].message.content})
    return out


def two_steps(agent: agentshards.Agent, x: int) -> dict[str, Any]:
    a = agent.step("double", record_call, f"double-{x}", {"v": x * 2})
    b = agent.step("double", record_call, f"double-again-{x}", {"v": a["v"] * 2})
    return {"a": a, "b": b}


def returns_tuple(agent: agentshards.Agent) -> Any:
    return agent.step("pair", lambda: (1, 2))


def returns_set(agent: agentshards.Agent) -> Any:
    return agent.step("bad", lambda: {1, 2})


def returns_object(agent: agentshards.Agent) -> Any:
    return object()


def raises(agent: agentshards.Agent, message: str) -> None:
    agent.step("before", record_call, "before-raise")
    raise RuntimeError(message)


def concurrent_unnamed(agent: agentshards.Agent) -> None:
    """Two threads make unnamed LLM calls that overlap: numbering would depend on timing."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            agent.step("warmup-" + threading.current_thread().name, lambda: None)
            barrier.wait()
            agent.step("same", _slow, 0.3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"t{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def concurrent_named(agent: agentshards.Agent) -> list[Any]:
    barrier = threading.Barrier(3)
    results: list[Any] = [None] * 3

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = agent.step(f"fetch-{i}", _slow, 0.1, i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def nested(agent: agentshards.Agent) -> Any:
    return agent.step("outer", lambda: agent.step("inner", lambda: 1))


def _slow(seconds: float, value: Any = None) -> Any:
    threading.Event().wait(seconds)
    return value


def not_module_level() -> Any:
    def inner(agent: agentshards.Agent) -> None:
        return None

    return inner


def two_steps_then_interrupt(agent: agentshards.Agent, x: int) -> dict[str, Any]:
    """Like two_steps, but the first execution is interrupted (BaseException) after the first step."""
    a = agent.step("double", record_call, f"double-{x}", {"v": x * 2})
    if x not in _INTERRUPTED:  # the first execution for each x is interrupted, once per test process
        _INTERRUPTED.append(x)
        raise KeyboardInterrupt
    b = agent.step("double", record_call, f"double-again-{x}", {"v": a["v"] * 2})
    return {"a": a, "b": b}


_INTERRUPTED: list[int] = []


def echo_inputs(agent: agentshards.Agent, a: Any, b: Any) -> Any:
    return agent.step("echo", record_call, "echo", {"a": a, "b": b})


def named_step(agent: agentshards.Agent, name: Any) -> Any:
    agent.step(name, record_call, "named")
    return name


SEEN: list[Any] = []


def llm_then_interrupt(agent: agentshards.Agent) -> None:
    completion = agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    SEEN.append(completion)
    if len(SEEN) == 1:
        raise KeyboardInterrupt


def embeddings_call(agent: agentshards.Agent) -> None:
    agent.llm.embeddings.create(model="m", input="x")


def named_llm_calls(agent: agentshards.Agent) -> None:
    msgs = [{"role": "user", "content": "x"}]
    agent.options(name="plan").llm.chat.completions.create(model="m", messages=msgs)
    agent.llm.chat.completions.create(model="m", messages=msgs)
    agent.options(name="plan").llm.chat.completions.create(model="m", messages=msgs)


def parallel_llm_calls(agent: agentshards.Agent) -> None:
    """Two unnamed LLM calls overlap in two threads: the second must be refused."""
    errors: list[BaseException] = []
    started = threading.Event()

    def call(i: int) -> None:
        try:
            if i == 1:
                started.wait(5)
                threading.Event().wait(0.05)
            else:
                started.set()
            agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def one_call(agent: agentshards.Agent, prompt: str = "hello", timeout_s: float | None = None,
             max_attempts: int | None = None) -> dict[str, Any]:
    completion = agent.options(timeout_s=timeout_s, max_attempts=max_attempts).llm.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": prompt}])
    return {"id": completion.id, "content": completion.choices[0].message.content}


def catches_rejection(agent: agentshards.Agent) -> dict[str, Any]:
    try:
        agent.llm.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "bad"}])
    except agentshards.LLMRequestRejected as exc:
        rejected = {"status": exc.status, "code": exc.code}
    good = agent.llm.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "good"}])
    return {"rejected": rejected, "good": good.id}


KEYS: list[str] = []


def charge(amount: int, key: str) -> dict[str, Any]:
    KEYS.append(key)
    return {"charged": amount, "key": key}


def pays_once(agent: agentshards.Agent, amount: int) -> Any:
    return agent.step("pay", lambda: charge(amount, agent.idempotency_key()))


FLAKY: dict[str, int] = {}


def flaky(tag: str, failures: int) -> str:
    FLAKY[tag] = FLAKY.get(tag, 0) + 1
    if FLAKY[tag] <= failures:
        raise ConnectionError(f"flaky {tag} failure {FLAKY[tag]}")
    return f"{tag} ok after {FLAKY[tag]}"


def retried_step(agent: agentshards.Agent, failures: int, attempts: int) -> Any:
    return agent.options(max_attempts=attempts).step("flaky", flaky, "retried", failures)


def slow_step(agent: agentshards.Agent, seconds: float, timeout_s: float) -> Any:
    return agent.options(timeout_s=timeout_s).step("slow", _slow, seconds, "done")


PROMPT_SUFFIX: list[str] = ["", ""]  # [llm#2 prompt suffix, tag step argument suffix]


def drifting(agent: agentshards.Agent, topic: str) -> list[Any]:
    """Its second LLM prompt depends on a module global, so tests can 'change the code' between runs."""
    first = agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": f"a {topic}"}])
    tag = agent.step("tag", record_call, "tag-" + topic + PROMPT_SUFFIX[1], {"t": topic})
    second = agent.llm.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"b {topic}{PROMPT_SUFFIX[0]}"}])
    third = agent.step("opaque", record_call, "opaque", {"o": 1})
    return [first.id, tag, second.id, third]


def opaque_args(agent: agentshards.Agent, n: int) -> Any:
    """Arguments that are not JSON-able: the input hash falls back to the function name only."""
    return agent.step("opaque", _count_items, {object() for _ in range(n)})


def _count_items(items: Any) -> int:
    return len(items)


REJECTION_RUNS: list[int] = []


def rejection_then_interrupt(agent: agentshards.Agent) -> None:
    REJECTION_RUNS.append(1)
    try:
        agent.llm.chat.completions.create(model="m", messages=[{"role": "user", "content": "bad"}])
    except agentshards.LLMRequestRejected:
        if len(REJECTION_RUNS) == 1:
            raise KeyboardInterrupt from None
        raise


def many_steps(agent: agentshards.Agent, n: int) -> int:
    for i in range(n):
        agent.step("s", record_call, f"s{i}", {"i": i, "pad": "p" * 900})
    return n


BIG_STEPS: list[int] = []


def _big(i: int) -> str:
    BIG_STEPS.append(i)
    return "b" * 60_000


def big_steps(agent: agentshards.Agent, n: int) -> int:
    for i in range(n):
        agent.step("blob", _big, i)
    return n


HOOKS: dict[str, Any] = {}


def replicated_steps(agent: agentshards.Agent, n: int) -> list[Any]:
    """n replicated plain steps; HOOKS['between'](i) runs between steps (tests wipe buckets there)."""
    out = []
    for i in range(n):
        if "between" in HOOKS:
            HOOKS["between"](i)
        out.append(agent.options(durability="replicated").step("rep", record_call, f"rep-{i}", {"i": i}))
    return out


def local_steps(agent: agentshards.Agent, n: int, size: int = 100) -> int:
    for i in range(n):
        agent.step("loc", record_call, f"loc-{i}", {"i": i, "pad": "z" * size})
    return n


def replicated_then_interrupt(agent: agentshards.Agent, n: int) -> list[Any]:
    """n replicated steps; the first execution is interrupted after step 3 (as if the node died)."""
    out = []
    for i in range(n):
        if i == 3 and "interrupted" not in HOOKS:
            HOOKS["interrupted"] = True
            raise KeyboardInterrupt
        out.append(agent.options(durability="replicated").step("rep", record_call, f"rep-{i}", {"tag": f"rep-{i}"}))
    return out


def outage_steps(agent: agentshards.Agent, n: int) -> int:
    """Local steps, with HOOKS['between'] called before each; the last one is replicated."""
    for i in range(n):
        if "between" in HOOKS:
            HOOKS["between"](i)
        options = agent.options(durability="replicated" if i == n - 1 else "local")
        options.step("out", record_call, f"out-{i}", {"i": i})
    return n


def priced_calls(agent: agentshards.Agent, n: int, model: str = "gpt-4o-mini", cached: int = 0,
                 interrupt_after: int | None = None) -> list[str]:
    ids = []
    for i in range(n):
        if interrupt_after is not None and i == interrupt_after and not HOOKS.get("interrupted"):
            HOOKS["interrupted"] = True
            raise KeyboardInterrupt
        completion = agent.llm.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"priced call {i}"}],
            metadata={"fake_cached_tokens": str(cached)})
        ids.append(completion.id)
    return ids


def responses_agent(agent: agentshards.Agent) -> dict[str, Any]:
    plain = agent.llm.responses.create(model="gpt-4o-mini", input="Summarise SQLite in one line")
    tool = agent.llm.responses.create(
        model="gpt-4o-mini", input="find papers on WAL",
        tools=[{"type": "function", "name": "search_papers", "description": "search",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}])
    call = tool.output[0]
    SEEN.append((plain, tool))
    return {"text": plain.output_text, "tool": call.name, "arguments": call.arguments,  # type: ignore[union-attr]
            "call_id": call.call_id, "ids": [plain.id, tool.id]}  # type: ignore[union-attr]


def not_durable_calls(agent: agentshards.Agent, which: str) -> None:
    if which == "responses.stream":
        agent.llm.responses.stream(model="m", input="x")
    elif which == "chat.parse":
        agent.llm.chat.completions.parse(model="m", messages=[])
    elif which == "beta":
        agent.llm.beta.chat.completions.parse(model="m", messages=[])


def responses_then_interrupt(agent: agentshards.Agent) -> dict[str, Any]:
    result = responses_agent(agent)
    if not HOOKS.get("interrupted"):
        HOOKS["interrupted"] = True
        raise KeyboardInterrupt
    return result


def dies_hard(agent: agentshards.Agent) -> None:
    """Kills its own worker process, every time (a segfaulting extension, an OOM kill)."""
    import signal

    agent.step("before", record_call, "before-death")
    os.kill(os.getpid(), signal.SIGKILL)


def fails_cleanly(agent: agentshards.Agent, message: str) -> None:
    raise ValueError(message)


async def async_agent(agent: agentshards.Agent) -> None:
    return None


def env_probe(agent: agentshards.Agent) -> dict[str, bool]:
    """What a worker's environment holds (a fleet must not hand agents the AWS secret)."""
    return agent.step("probe", lambda: {k: k in os.environ for k in
                                        ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "OPENAI_API_KEY")})


def fails_until(agent: agentshards.Agent, marker: str) -> str:
    """Fails (an ordinary exception: the run is recorded as failed) until the marker file exists."""
    agent.step("first", record_call, "first")
    return str(agent.step("check", _check_marker, marker))


def _check_marker(marker: str) -> str:
    from pathlib import Path

    if not Path(marker).exists():
        raise RuntimeError(f"{marker} is missing")
    return "ok"


def big_result(agent: agentshards.Agent, mb: int) -> None:
    agent.step("big", lambda: "x" * (mb * 1024 * 1024))


def acked_steps(agent: agentshards.Agent, n: int, durability: str = "replicated") -> int:
    """n steps; prints "ack i" once step i has returned to agent code (what a crash test may rely on)."""
    for i in range(n):
        agent.options(durability=durability).step("ack", record_call, f"ack-{i}", {"i": i})
        print(f"ack {i}", flush=True)
    return n


LOCKED: list[str] = []  # names of the steps whose function ran, across executions


def write_locked_once(agent: agentshards.Agent, shard: str) -> int:
    """Another connection holds the shard's write lock while the second step records (first execution only)."""
    import apsw

    first = agent.step("first", lambda: LOCKED.append("first") or 1)
    if "held" in LOCKED:
        return first + agent.step("second", lambda: LOCKED.append("second") or 2)
    LOCKED.append("held")
    other = apsw.Connection(shard)
    other.execute("BEGIN IMMEDIATE")  # what a checkpointing Litestream holds, here for longer than busy_timeout
    try:
        return first + agent.step("second", lambda: LOCKED.append("second") or 2)
    finally:
        other.execute("ROLLBACK")
        other.close()
