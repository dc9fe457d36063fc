"""The async agent client mirrors the blocking one: lifecycle, ``async with``, approvals,
delegation and errors, against the real broker."""

from __future__ import annotations

import asyncio

import pytest
from conftest import BrokerProcess
from helpers import Approver

import leash


async def test_an_async_task_calls_delegates_and_completes(broker: BrokerProcess) -> None:
    async with leash.AsyncBroker(broker.url, broker.credential("research-bot")) as agent:
        async with await agent.start_task("async", ["notes.search", "notes.read"]) as task:
            hits = await task.call("notes.search", {"query": "attenuated"})
            assert [h["path"] for h in hits["hits"]] == ["/notes/biscuit"]
            assert {t.name for t in await task.tools()} == {"notes.search", "notes.read"}
            child = await task.attenuate(['check if call("notes.read")'])
            sub = leash.AsyncTask.from_token(broker.url, child)
            note = await sub.call("notes.read", {"path": "/notes/leash"})
            assert "task-bound" in note["text"]
            with pytest.raises(leash.LeashError) as narrowed:
                await sub.call("notes.search", {"query": "x"})
            assert (narrowed.value.status, narrowed.value.code) == (403, "capability_denied")
            # Calls run concurrently on one client.
            results = await asyncio.gather(
                *(task.call("notes.search", {"query": q}) for q in ("leash", "mcp", "biscuit"))
            )
            assert len(results) == 3
            await task.renew(300)
            await task.call("notes.search", {"query": "leash"})
        with pytest.raises(leash.LeashError) as ended:
            await sub.call("notes.read", {"path": "/notes/leash"})
        assert (ended.value.status, ended.value.code) == (401, "task_inactive")


async def test_async_with_completes_the_task_when_the_block_fails(broker: BrokerProcess) -> None:
    agent = leash.AsyncBroker(broker.url, broker.credential("research-bot"))
    with pytest.raises(ValueError, match="boom"):
        async with await agent.start_task("fails", ["notes.search"]) as task:
            raise ValueError("boom")
    with pytest.raises(leash.LeashError) as refused:
        await task.call("notes.search", {"query": "x"})
    assert refused.value.code == "task_inactive"
    await agent.aclose()


async def test_async_approvals_are_waited_for(broker: BrokerProcess) -> None:
    careful = leash.AsyncBroker(broker.url, broker.credential("careful-bot"), approval_timeout=20)
    with Approver(broker, "issuance", "async approval"):
        task = await careful.start_task("async approval", ["notes.search"])
    async with task:
        assert (await task.call("notes.search", {"query": "protocol"}))["hits"]
    agent = leash.AsyncBroker(broker.url, broker.credential("research-bot"), approval_timeout=20)
    async with await agent.start_task("held call", ["notes.append"]) as held:
        with Approver(broker, "call", "held call"):
            done = await held.call("notes.append", {"path": "/notes/async", "text": "hi"})
        assert done["length"] == 2


async def test_async_errors_carry_status_and_code(broker: BrokerProcess) -> None:
    agent = leash.AsyncBroker(broker.url, broker.credential("research-bot"))
    async with await agent.start_task("errors", ["notes.search"]) as task:
        with pytest.raises(leash.LeashError) as invalid:
            await task.call("notes.search", {"query": 7})
        assert (invalid.value.status, invalid.value.code) == (422, "invalid_arguments")
        assert "<redacted>" in repr(task)
        assert task.token not in repr(task)
