"""An agent that opens a task, calls a tool, delegates a narrower token to a sub-agent,
and completes the task (which ends the sub-agent's access too).

Run (broker and tool server up, see the README): ``LEASH_CREDENTIAL=… python
examples/agent.py`` (``LEASH_URL`` defaults to http://127.0.0.1:7070)."""

from __future__ import annotations

import os
from typing import Any

import leash


def sub_agent(url: str, token: str) -> Any:
    """The sub-agent's side: it holds only the narrowed token."""
    task = leash.Task.from_token(url, token)
    return task.call("notes.read", {"path": "/notes/biscuit"})


def run(url: str, credential: str) -> dict[str, Any]:
    """Opens a task, searches, delegates one read (at most 2 calls) and completes."""
    with (
        leash.Broker(url, credential) as broker,
        broker.start_task("summarise notes on biscuit", ["notes.*"], ttl_seconds=300) as task,
    ):
        hits = task.call("notes.search", {"query": "biscuit"})
        child = task.attenuate(
            ['check if call("notes.read")', "reject if token_calls($n), $n >= 2"]
        )
        note = sub_agent(url, child)
        report = {"task": task.id, "hits": hits["hits"], "delegated_read": note}
    # Here the task is completed: the child token is refused too.
    try:
        sub_agent(url, child)
    except leash.LeashError as refused:
        report["after_completion"] = refused.code
    return report


if __name__ == "__main__":
    print(run(os.environ.get("LEASH_URL", "http://127.0.0.1:7070"), os.environ["LEASH_CREDENTIAL"]))
