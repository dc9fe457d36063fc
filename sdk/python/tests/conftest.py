"""Fixtures: the real ``leash`` binary on a free port with a test policy, and the example
FastAPI tool server (protected by the Python verifier) as its upstream."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import leash

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "sdk" / "python" / "examples"))

from tool_server import create_app  # noqa: E402

ADMIN = "test-admin-token-0123456789abcdef"
API_KEY = "test-upstream-key-0123"
_LISTENING = re.compile(r"leash is listening address=([0-9.]+:[0-9]+)")


def leash_binary() -> Path:
    """``LEASH_BIN``, or the workspace's debug build (``cargo build --bins``)."""
    path = Path(os.environ.get("LEASH_BIN", ROOT / "target" / "debug" / "leash"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --bins` (scripts/test.sh does)")
    return path


def policy(upstream: str, black_hole: str) -> str:
    """The test policy: three tools on the example server, one on an upstream that
    never answers (``black_hole``), three agents."""
    schema_search = (
        '{ type = "object", required = ["query"], additionalProperties = false, '
        'properties = { query = { type = "string", minLength = 1, maxLength = 200 } } }'
    )
    schema_read = (
        '{ type = "object", required = ["path"], additionalProperties = false, '
        'properties = { path = { type = "string" } } }'
    )
    schema_append = (
        '{ type = "object", required = ["path", "text"], additionalProperties = false, '
        'properties = { path = { type = "string" }, text = { type = "string" } } }'
    )
    key = f'{{ Authorization = "Bearer {API_KEY}" }}'
    return textwrap.dedent(
        f"""
        [tools."notes.search"]
        description = "Search the notes"
        upstream = "{upstream}/search"
        input_schema = {schema_search}
        upstream_headers = {key}

        [tools."notes.read"]
        description = "Read one note by path"
        upstream = "{upstream}/read"
        input_schema = {schema_read}
        upstream_headers = {key}

        [tools."notes.append"]
        description = "Append text to a note"
        upstream = "{upstream}/append"
        approval = "per_call"
        input_schema = {schema_append}
        upstream_headers = {key}

        [tools."slow.echo"]
        description = "An upstream that never answers"
        upstream = "{black_hole}/echo"
        timeout_ms = 300
        input_schema = {{ type = "object" }}

        [agents.research-bot]
        tools = ["notes.*", "slow.*"]
        max_ttl_seconds = 900
        idle_timeout_seconds = 300
        max_calls = 50

        [agents.careful-bot]
        tools = ["notes.search"]
        max_ttl_seconds = 600
        approval = "issuance"

        [agents.framework-bot]
        tools = ["notes.search", "notes.read"]
        max_ttl_seconds = 600

        [approvals]
        expire_after_seconds = 900
        """
    )


@dataclass
class BrokerProcess:
    """A running ``leash serve`` and what tests need to drive it."""

    url: str
    process: subprocess.Popen[bytes]
    data: Path
    upstream: str
    #: The last capability Leash forwarded, per upstream path.
    captured: dict[str, str]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """An admin request; returns the JSON body (asserting a 2xx)."""
        response = self.http.request(
            method, self.url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert response.is_success, response.text
        return response.json()

    def credential(self, agent: str) -> str:
        """A fresh agent credential."""
        return str(self.admin("POST", f"/v1/agents/{agent}/credentials")["credential"])

    def approver(self, name: str = "alice") -> str:
        """A fresh approver credential."""
        return str(self.admin("POST", f"/v1/approvers/{name}/credentials")["credential"])

    def as_approver(self, credential: str, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(
            method, self.url + path, json=body, headers={"Authorization": f"Bearer {credential}"}
        )
        assert response.is_success, response.text
        return response.json()

    def upstream_calls(self) -> list[dict[str, Any]]:
        """What the example tool server saw (tool, task, agent per admitted call)."""
        calls: list[dict[str, Any]] = self.http.get(self.upstream + "/healthz").json()["calls"]
        return calls


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _start_broker(policies: Path, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASH_")}
    env.update({"LEASH_LOG": "info", "LEASH_ADMIN_TOKEN": ADMIN, "NO_COLOR": "1"})
    process = subprocess.Popen(
        [
            str(leash_binary()),
            *("serve", "--listen", "127.0.0.1:0", "--sweep-interval-ms", "200"),
            *("--policies", str(policies), "--data", str(data)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode(errors="replace")
        if not line:
            break
        found = _LISTENING.search(line)
        if found:
            # Keep draining the log so the broker never blocks on a full pipe.
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
            return process, f"http://{found.group(1)}"
    process.kill()
    pytest.fail("the broker did not start")


class _Recorder:
    """ASGI wrapper in front of the example server recording the last ``Leash-Capability``
    Leash sent per path (a test taps the wire; the example itself keeps nothing)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.captured: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        for name, value in scope.get("headers", []):
            if name == b"leash-capability":
                self.captured[scope["path"]] = value.decode()
        await self.app(scope, receive, send)


class _Upstream:
    """The example tool server in a thread, on a socket bound before the broker starts."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server: uvicorn.Server | None = None
        self.recorder: _Recorder | None = None
        self.thread: threading.Thread | None = None

    def start(self, verifier: leash.Verifier) -> None:
        self.recorder = _Recorder(create_app(verifier, API_KEY))
        config = uvicorn.Config(self.recorder, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        server, sock = self.server, self.socket
        self.thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the example tool server did not start"

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.socket.close()


def spawn_broker(root: Path, policy_text: str) -> tuple[subprocess.Popen[bytes], str]:
    """Another broker (its own policy and data folder under ``root``), for tests that
    stop it; the caller terminates it."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "test.toml").write_text(policy_text)
    return _start_broker(root / "policies", root / "data")


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerProcess]:
    """One broker and one example tool server for the whole session."""
    with tempfile.TemporaryDirectory(prefix="leash-py-") as tmp:
        root = Path(tmp)
        (root / "policies").mkdir()
        upstream = _Upstream()
        # Accepts connections (the kernel does) and never answers one.
        black_hole = socket.socket()
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        hole = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        (root / "policies" / "test.toml").write_text(policy(upstream.url, hole))
        process, url = _start_broker(root / "policies", root / "data")
        verifier = leash.Verifier(url)
        upstream.start(verifier)
        try:
            assert upstream.recorder is not None
            yield BrokerProcess(
                url, process, root / "data", upstream.url, upstream.recorder.captured
            )
        finally:
            upstream.stop()
            black_hole.close()
            verifier.close()
            process.terminate()
            process.wait(timeout=10)
