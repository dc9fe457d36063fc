"""Every ```python block of the README's Python SDK section runs as written against the
real broker (with ``LEASH_URL`` and ``LEASH_CREDENTIAL`` set, as the README says)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, BrokerProcess

import leash


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## The Python SDK")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_block(source: str) -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace, out.getvalue()


@pytest.fixture
def env(broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch) -> BrokerProcess:
    monkeypatch.setenv("LEASH_URL", broker.url)
    monkeypatch.setenv("LEASH_CREDENTIAL", broker.credential("research-bot"))
    return broker


def test_the_readme_has_the_python_quickstart() -> None:
    assert len(python_blocks()) >= 2


def test_the_agent_quickstart_runs_as_written(env: BrokerProcess) -> None:
    _, printed = run_block(python_blocks()[0])
    assert "/notes/biscuit" in printed
    assert printed.strip().endswith("401 task_inactive")


async def test_the_tool_server_snippet_protects_its_route(env: BrokerProcess) -> None:
    namespace, _ = run_block(python_blocks()[1])
    app, verifier = namespace["app"], namespace["verifier"]
    agent = leash.Broker(env.url, leash_credential())
    try:
        with agent.start_task("readme tool server", ["notes.search"]) as task:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://tool") as client:
                missing = await client.post("/search", json={"query": "x"})
                assert missing.status_code == 401
                direct = await client.post(
                    "/search", json={"query": "x"}, headers={"Leash-Capability": task.token}
                )
                assert direct.status_code == 403
                assert direct.json()["error"]["code"] == "capability_denied"
                unmapped = await client.post("/other", json={})
                assert unmapped.status_code == 403
    finally:
        verifier.close()


def test_the_framework_snippets_run_as_written(env: BrokerProcess) -> None:
    for source in python_blocks()[2:]:
        run_block(source)


def leash_credential() -> str:
    import os

    return os.environ["LEASH_CREDENTIAL"]


def test_blocks_come_from_the_top_level_readme() -> None:
    assert (ROOT / "README.md").exists()
    assert Path(__file__).resolve().is_relative_to(ROOT)
