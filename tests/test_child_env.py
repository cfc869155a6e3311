"""What the real child processes hold in their environment, read from /proc/PID/environ: Litestream only the
variables it uses, workers (and the zygote they fork from) no AWS credential of any kind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import certifi

from agentshards import Fleet

from agent_process import TESTS_DIR

CANARIES = {
    "AWS_ACCESS_KEY_ID": "canary-akid", "AWS_SECRET_ACCESS_KEY": "canary-secret",
    "AWS_SESSION_TOKEN": "canary-token", "AWS_PROFILE": "canary-profile",
    "AWS_ROLE_ARN": "arn:aws:iam::000000000000:role/canary", "AWS_WEB_IDENTITY_TOKEN_FILE": "/canary/token",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/canary", "AWS_CA_BUNDLE": "/canary/ca.pem",
    "AWS_REGION": "eu-canary-1", "SSL_CERT_FILE": certifi.where(),  # real: workers use it
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "*", "OPENAI_API_KEY": "canary-openai", "APP_DATABASE_PASSWORD": "canary-db",
}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_litestream_gets_an_allow_list_and_workers_no_aws_credential(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **CANARIES}
    fleet = Fleet(tmp_path / "d", replica=str(tmp_path / "replica"), app_dir=TESTS_DIR, env=env)
    fleet.launch("sample_agents:slow_step", {"slow": {"seconds": 1.0, "timeout_s": 60.0}})
    outcome: dict[str, object] = {}
    runner = threading.Thread(target=lambda: outcome.update(fleet.wait(timeout_s=120)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not fleet._supervisor or not fleet.worker_pids():
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.02)
        worker = _environ(fleet.worker_pids()[0])
        zygote = _environ(fleet._supervisor._zygote._proc.pid)  # type: ignore[union-attr]
        litestream = _environ(fleet._replication.litestream.pid)
    finally:
        runner.join()
    assert outcome["slow"] == "done"

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_REGION", "SSL_CERT_FILE",
                 "HTTPS_PROXY", "NO_PROXY"):
        assert litestream.get(name) == CANARIES[name], name  # what Litestream uses reaches it
    for name in ("AWS_CA_BUNDLE", "OPENAI_API_KEY", "APP_DATABASE_PASSWORD"):
        assert name not in litestream, name  # the rest does not
    plumbing = {"PATH", "HOME", "TMPDIR", "TZ", "SSL_CERT_DIR", "HTTP_PROXY", "http_proxy", "https_proxy", "no_proxy"}
    assert "PATH" in litestream and set(litestream) - set(CANARIES) <= plumbing, set(litestream) - set(CANARIES)

    for proc in (worker, zygote):
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                     "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
            assert name not in proc, name
        assert not [v for v in proc.values() if "canary-akid" in v or "canary-secret" in v or "canary-token" in v]
        assert proc["AWS_SHARED_CREDENTIALS_FILE"] == proc["AWS_CONFIG_FILE"] == "/dev/null"
        assert proc["AWS_EC2_METADATA_DISABLED"] == "true"
        assert proc["OPENAI_API_KEY"] == "canary-openai" and proc["APP_DATABASE_PASSWORD"] == "canary-db"
