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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback for the whole session."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).read()
            break
        except OSError:
            assert proc.poll() is None, "moto_server exited"
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.05)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(moto_endpoint: str) -> dict[str, str]:
    """The environment a user would export: endpoint, region and (test) credentials."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret-canary",
               AWS_ENDPOINT_URL_S3=moto_endpoint, AWS_REGION="us-east-1")
    return env


@pytest.fixture
def bucket(s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing-secret-canary").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["file", "s3"])
def replica(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """One replica URL per backend (a local directory, and S3 on moto); for S3 the AWS variables are
    exported as a user would, since public entry points read them at the edge."""
    import os

    if request.param == "file":
        return str(tmp_path / "replica")
    env = request.getfixturevalue("s3_env")
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return f"s3://{request.getfixturevalue('bucket')}/fleet"
