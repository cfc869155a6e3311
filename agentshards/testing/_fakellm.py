"""A fake OpenAI-compatible server on 127.0.0.1 for tests, benchmarks and the offline demo.

Answers are derived from the request (same request, same text), and every response carries the server's
next serial number in its id (``chatcmpl-fake-<serial>``) and an ``x-fake-serial`` header, so a test can
tell a replayed answer (old serial) from a fresh one and count what a resumed agent paid for.

A request with ``"stream": true`` gets the same answer as server-sent events, cut into the pieces the real
API sends (see :mod:`._fakestream`); a :class:`Fault` can cut such a stream off or pause it mid-way.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import _fakestream
from ._fakescript import AgentScript, Scripts, ToolCall, Turn, scripted_chat_completion, scripted_response

ID_PREFIX = "chatcmpl-fake-"
RESPONSE_PREFIX = "resp_fake-"
CHAT_PATH, RESPONSES_PATH = "/v1/chat/completions", "/v1/responses"


@dataclass(frozen=True)
class FakeRequest:
    """One request the server answered (or refused), in arrival order."""

    serial: int
    path: str
    body: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of answering normally.

    ``status`` answers with that HTTP error (``code`` in the body, optional Retry-After headers);
    ``delay_s`` answers normally but late; ``hang`` accepts the request and never answers.
    For streamed answers only: ``cut_after`` sends that many events, then closes the connection mid-body
    (the client sees a broken stream); ``end_after`` sends that many events, then ends the body cleanly (a
    stream cut short without an error, as a proxy may do); ``pause_after`` sends that many events, then waits for
    :meth:`FakeLLMServer.resume` (a test kills the client meanwhile; see :meth:`FakeLLMServer.wait_paused`).
    """

    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    retry_after_ms: int | None = None
    delay_s: float = 0.0
    hang: bool = False
    cut_after: int | None = None
    end_after: int | None = None
    pause_after: int | None = None


def serial_of(completion_id: str) -> int:
    """The serial number inside a chat completion or response id this server issued."""
    for prefix in (ID_PREFIX, RESPONSE_PREFIX):
        if completion_id.startswith(prefix):
            return int(completion_id[len(prefix):])
    raise ValueError(f"{completion_id!r} was not issued by FakeLLMServer")


def _dated(model: str) -> str:
    """Like the real API, answer with a dated version of a known base model."""
    return f"{model}-2024-07-18" if model in ("gpt-4o-mini", "gpt-4o") else model


def _answer(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    last = str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""
    tag = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8]
    return f"[{tag}] answer to: {last[:160]}"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of agents connect at once; the default backlog of 5 drops SYNs (1 s stalls)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (the crash tests do that on purpose) is not a server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLMServer:
    """Start with ``with FakeLLMServer() as llm:``; point the OpenAI client at ``llm.base_url``."""

    def __init__(self, *, delay_s: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._serial = 0
        self._requests: list[FakeRequest] = []
        self._httpd = _QuietServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._released = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._scripts: Scripts = {}

    def script(self, *turns: Turn, instructions: str | None = None) -> None:
        """Answer later requests by a script instead of echoing: each turn is a list of :class:`ToolCall`
        (made in parallel) or the final text (``{outputs}`` becomes the tool results), e.g.
        ``server.script([ToolCall("add", {"a": 2, "b": 3})], "the sum is {outputs}")``. With
        ``instructions``, only requests with that system prompt (one agent of several) follow it."""
        if not turns or any(not isinstance(t, str) and not all(isinstance(c, ToolCall) for c in t) for t in turns):
            raise ValueError("script(...) takes turns: lists of ToolCall, or a final answer str")
        with self._lock:
            self._scripts[instructions] = AgentScript(tuple(turns))

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` requests; each still gets a serial and a log entry."""
        with self._lock:
            self._faults.extend([fault] * times)

    def fail_next(self, times: int = 1, *, status: int = 500, code: str | None = None,
                  retry_after: str | None = None, retry_after_ms: int | None = None) -> None:
        """Answer the next ``times`` requests with an OpenAI-style error (and optional Retry-After headers)."""
        self.inject(Fault(status=status, code=code, retry_after=retry_after, retry_after_ms=retry_after_ms), times)

    def wait_paused(self, timeout_s: float) -> bool:
        """Block until a stream paused by ``Fault(pause_after=...)`` (True) or ``timeout_s`` passed (False)."""
        return self._paused.wait(timeout_s)

    def resume(self) -> None:
        """Let paused streams go on (to a client that may be dead by now)."""
        self._resume.set()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def requests(self) -> list[FakeRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # let hung handlers go
        self._resume.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log(self, path: str, body: dict[str, Any]) -> tuple[int, Fault | None]:
        with self._lock:
            self._serial += 1
            self._requests.append(FakeRequest(self._serial, path, body, time.time()))
            return self._serial, (self._faults.pop(0) if self._faults else None)

    def _chat_completion(self, serial: int, body: dict[str, Any]) -> dict[str, Any]:
        """A chat answer: the script's, when one applies (see :meth:`script`); else text, or a call of the first
        function tool when the request offers tools and its last message is not already a tool's result."""
        scripted = scripted_chat_completion(self._scripts, serial, body, _dated(str(body.get("model", "fake-model"))))
        if scripted is not None:
            return scripted
        content = _answer(body)
        tools = [t.get("function") for t in body.get("tools") or []
                 if isinstance(t, dict) and t.get("type") == "function"]
        messages = body.get("messages") or []
        last_role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish = "stop"
        if tools and isinstance(tools[0], dict) and last_role != "tool":
            digest = content[1:9]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_fake-{serial}", "type": "function",
                 "function": {"name": str(tools[0].get("name", "tool")),
                              "arguments": json.dumps({"query": content[:80], "tag": digest})}}]}
            finish = "tool_calls"
        cached = int(body.get("metadata", {}).get("fake_cached_tokens", 0)) if isinstance(
            body.get("metadata"), dict) else 0
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages") or []
                            if isinstance(m, dict))
        completion_tokens = len(content.split())
        return {
            "id": f"{ID_PREFIX}{serial}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": _dated(str(body.get("model", "fake-model"))),
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None, "message": message}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": min(cached, prompt_tokens)}},
            "system_fingerprint": "fp_agentshards_fake",
        }

    def _response(self, serial: int, body: dict[str, Any]) -> dict[str, Any]:
        """A Responses API answer: a message, or a function call when the request offers function tools."""
        scripted = scripted_response(self._scripts, serial, body)
        if scripted is not None:
            return scripted
        raw_input = body.get("input", "")
        text_in = raw_input if isinstance(raw_input, str) else json.dumps(raw_input, sort_keys=True)
        digest = hashlib.sha256(text_in.encode()).hexdigest()[:8]
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        output: list[dict[str, Any]]
        if tools:
            output = [{"type": "function_call", "id": f"fc_fake-{serial}", "call_id": f"call_fake-{serial}",
                       "name": str(tools[0].get("name", "tool")), "status": "completed",
                       "arguments": json.dumps({"query": text_in[:80], "tag": digest})}]
            out_text = ""
        else:
            out_text = f"[{digest}] response to: {text_in[:160]}"
            output = [{"type": "message", "id": f"msg_fake-{serial}", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": out_text, "annotations": []}]}]
        input_tokens = len(text_in.split()) + 4
        output_tokens = max(1, len(out_text.split()))
        return {
            "id": f"{RESPONSE_PREFIX}{serial}", "object": "response", "created_at": int(time.time()),
            "model": str(body.get("model", "fake-model")), "status": "completed", "output": output,
            "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens,
                      "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms stall

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the request log
                pass

            def _send(self, status: int, payload: dict[str, Any], serial: int | None = None,
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                if serial is not None:
                    self.send_header("x-fake-serial", str(serial))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:
                    self.close_connection = True  # the client died mid-send: no request was made
                    return
                try:
                    body = json.loads(raw or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("body is not an object")
                except ValueError as exc:
                    self._send(400, {"error": {"message": f"invalid JSON: {exc}", "type": "invalid_request_error",
                                               "code": "invalid_json"}})
                    return
                path = self.path.rstrip("/")
                if path not in (CHAT_PATH, RESPONSES_PATH):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error",
                                               "code": "not_found"}})
                    return
                if path == CHAT_PATH and not isinstance(body.get("messages"), list):
                    self._send(400, {"error": {"message": "'messages' is required", "type": "invalid_request_error",
                                               "code": "missing_required_parameter"}})
                    return
                serial, fault = server._log(self.path, body)
                if fault is not None and fault.hang:
                    server._released.wait()  # never answers while the server runs
                    return
                if fault is not None and fault.status is not None:
                    headers = {}
                    if fault.retry_after is not None:
                        headers["retry-after"] = fault.retry_after
                    if fault.retry_after_ms is not None:
                        headers["retry-after-ms"] = str(fault.retry_after_ms)
                    self._send(fault.status, {"error": {"message": f"injected fault {fault.status}",
                                                        "type": "fake_fault", "code": fault.code}}, serial, headers)
                    return
                delay = server.delay_s + (fault.delay_s if fault is not None else 0.0)
                if delay:
                    time.sleep(delay)
                answer = server._chat_completion if path == CHAT_PATH else server._response
                if body.get("stream") is True:
                    self._stream(_fakestream.events(path == CHAT_PATH, answer(serial, body), body), serial, fault)
                else:
                    self._send(200, answer(serial, body), serial)

            def _stream(self, events: list[bytes], serial: int, fault: Fault | None) -> None:
                """Server-sent events in HTTP/1.1 chunks: a cut is a close before the final zero-length chunk,
                which the client reports as an incomplete body (a broken stream), not as a short answer."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("x-fake-serial", str(serial))
                self.end_headers()
                cut = fault.cut_after if fault is not None else None
                pause = fault.pause_after if fault is not None else None
                end = fault.end_after if fault is not None else None
                for sent, event in enumerate(events):
                    if sent == cut:
                        self.close_connection = True
                        return
                    if sent == end:
                        break
                    if sent == pause:
                        server._paused.set()
                        server._resume.wait()
                        if server._released.is_set():
                            self.close_connection = True
                            return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        return Handler


def main() -> None:
    """``python -m agentshards.testing._fakellm --port 8700``: serve until interrupted (for manual demos)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with FakeLLMServer(port=args.port, delay_s=args.delay) as server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
