#!/usr/bin/env python3
"""An MCP client built with the official MCP Python SDK (mcp 2.x) on a session with
Leash's /mcp (the initialize generation: the server's requests reach the client on its
session). It answers sampling with a canned model reply and elicitation with a name, and
records what reached it; prints one JSON report.

With REVOKE (`TASK_URL ADMIN_TOKEN`) it only asks the server to log a line a second
later, revokes its own task through the API, and reports what it heard after: nothing may
reach the client of a task that ended. Without REVOKE after the line, it reports that too
(the line must arrive).

With `cancel UPSTREAM_URL` it gives up on a slow call after a second (the SDK then
cancels it), and reports whether the upstream saw the call cancelled while this session
was still open (UPSTREAM_URL/reads).
With `changes UPSTREAM_URL` it lists tools, makes the upstream change a tool's
description (POST UPSTREAM_URL/rug-pull), and reports the list-changed notifications it
got within five seconds and the tools listed after.

Usage: mcp_relay.py URL TOKEN [later | later TASK_URL ADMIN_TOKEN | cancel UPSTREAM_URL | changes UPSTREAM_URL]
"""
import asyncio
import json
import sys
import urllib.request
from typing import Any

from mcp import types
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from scripted_client import describe, elicitation, sampling, seen, text_of

url, token = sys.argv[1:3]
later = sys.argv[3:4] == ["later"]
cancel = sys.argv[4] if sys.argv[3:4] == ["cancel"] else None
changes = sys.argv[4] if sys.argv[3:4] == ["changes"] else None
revoke = sys.argv[4:6]


async def on_message(message: Any) -> None:
    method = getattr(getattr(message, "root", message), "method", None)
    if isinstance(method, str) and method.endswith("list_changed"):
        seen["changed"].append(method)


async def logged(params: types.LoggingMessageNotificationParams) -> None:
    seen["logs"].append(str(params.data))


def post(url: str, bearer: str) -> int:
    """A JSON POST to the broker's API; its status."""
    request = urllib.request.Request(
        url,
        data=json.dumps({"reason": "test"}).encode(),
        headers={"Authorization": "Bearer " + bearer, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as answer:
        return int(answer.status)


def reads_of(upstream: str) -> list[str]:
    """What the test upstream records (GET UPSTREAM/reads)."""
    with urllib.request.urlopen(upstream + "/reads") as answer:
        return list(json.loads(answer.read())["reads"])


async def main() -> None:
    report: dict[str, Any] = {}
    http = create_mcp_http_client(headers={"Authorization": "Bearer " + token})
    try:
        async with Client(
            streamable_http_client(url, http_client=http),
            mode="legacy",
            sampling_callback=sampling,
            elicitation_callback=elicitation,
            logging_callback=logged,
            message_handler=on_message,
        ) as client:
            report["protocol_version"] = str(client.protocol_version)
            await client.set_logging_level("info")
            if changes:
                report["before"] = sorted(t.name for t in (await client.list_tools()).tools)
                report["rug_pull"] = await asyncio.to_thread(post, changes + "/rug-pull", "")
                for _ in range(50):
                    if "notifications/tools/list_changed" in seen["changed"]:
                        break
                    await asyncio.sleep(0.1)
                report["after"] = sorted(t.name for t in (await client.list_tools(cache_mode="refresh")).tools)
                report.update(seen)
                print(json.dumps(report))
                return
            if cancel:
                try:
                    await asyncio.wait_for(client.call_tool("everything.slow", {}), 1.0)
                    report["cancelled"] = False
                except TimeoutError:
                    report["cancelled"] = True
                report["upstream_saw_cancel"] = False
                for _ in range(15):
                    if "cancelled:slow" in await asyncio.to_thread(reads_of, cancel):
                        report["upstream_saw_cancel"] = True
                        break
                    await asyncio.sleep(0.1)
                print(json.dumps(report))
                return
            if later:
                await client.call_tool("everything.log_later", {"text": "after the call"})
                if revoke:
                    task_url, admin = revoke
                    report["revoked"] = await asyncio.to_thread(post, task_url + "/revoke", admin)
                await asyncio.sleep(2.5)
                report.update(seen)
                print(json.dumps(report))
                return

            async def progress(value: float, total: float | None, message: str | None) -> None:
                seen["progress"].append([value, total, message])

            for key, tool, args in [
                ("ask_model", "everything.ask_model", {"question": "What is six times seven?"}),
                ("ask_person", "everything.ask_person", {}),
                ("ask_password", "everything.ask_password", {}),
            ]:
                result = await client.call_tool(tool, args)
                report[key] = {"is_error": bool(result.is_error), "text": text_of(result)}
            result = await client.call_tool("everything.count", {"n": 3}, progress_callback=progress)
            report["count"] = {"is_error": bool(result.is_error), "text": text_of(result)}
            # Notifications may trail the answer a little.
            await asyncio.sleep(0.5)
    except BaseException as err:
        report["error"] = describe(err)
    report.update(seen)
    print(json.dumps(report))


asyncio.run(main())
