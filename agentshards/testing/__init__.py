"""Test doubles that users may run in their own tests: an OpenAI-compatible fake LLM server, offline.

``agentshards.FakeLLMServer`` is the same class; this module is its home.
"""

from ._fakellm import FakeLLMServer
from ._fakescript import ToolCall

__all__ = ["FakeLLMServer", "ToolCall"]
