"""The examples in sdk/python/examples run as written against the real broker."""

from __future__ import annotations

import agent as agent_example
from conftest import BrokerProcess


def test_the_agent_example_delegates_and_completes(broker: BrokerProcess) -> None:
    report = agent_example.run(broker.url, broker.credential("research-bot"))
    assert "/notes/biscuit" in [h["path"] for h in report["hits"]]
    assert "attenuated offline" in report["delegated_read"]["text"]
    assert report["after_completion"] == "task_inactive"
    tools = [c["tool"] for c in broker.upstream_calls() if c["task_id"] == report["task"]]
    assert tools == ["notes.search", "notes.read"]
