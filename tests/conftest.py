from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentshards import FakeLLMServer, LLMConfig, RunConfig

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def run_config(fake_llm: FakeLLMServer) -> RunConfig:
    return RunConfig(llm=LLMConfig(api_key="test-key", base_url=fake_llm.base_url, max_attempts=3, backoff_s=0.01))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
