#!/usr/bin/env python3
"""An MCP client built with the official MCP Python SDK (mcp 2.x) that answers an
upstream's questions through Leash's /mcp: sampling (a canned model reply), elicitation
(a name) and roots. With MODE "auto" it speaks 2026-07-28, where the upstream asks in
rounds (`input_required`) and the SDK makes the same call again with its answers; with
"legacy" (2025-11-25, initialize) the upstream asks during the call on the session.
Every outcome is recorded (a refusal as its error text); prints one JSON report.

Usage: mcp_rounds.py URL TOKEN MODE
"""
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from scripted_client import describe, elicitation, list_roots, sampling, seen, text_of

url, token, mode = sys.argv[1:4]
async def outcome(request: Callable[[], Awaitable[Any]], shape: Callable[[Any], Any]) -> dict[str, Any]:
    try:
        return {"ok": shape(await request())}
    except Exception as err:  # a JSON-RPC error
        return {"error": describe(err)}


def tool_result(result: Any) -> dict[str, Any]:
    return {"is_error": bool(result.is_error), "text": text_of(result)}


async def main() -> None:
    report: dict[str, Any] = {}
    http = create_mcp_http_client(headers={"Authorization": "Bearer " + token})
    try:
        async with Client(
            streamable_http_client(url, http_client=http),
            mode=mode,
            sampling_callback=sampling,
            elicitation_callback=elicitation,
            list_roots_callback=list_roots,
        ) as client:
            report["protocol_version"] = str(client.protocol_version)
            for key, tool, args in [
                ("consult", "everything.consult", {"question": "What is six times seven?"}),
                ("greet", "everything.greet", {}),
                ("sign_in", "everything.sign_in", {}),
                ("where", "everything.where", {}),
            ]:
                report[key] = await outcome(lambda tool=tool, args=args: client.call_tool(tool, args), tool_result)
            if mode != "legacy":
                report["briefing"] = await outcome(
                    lambda: client.get_prompt("everything.briefing", {"topic": "rounds"}),
                    lambda r: [getattr(m.content, "text", "") for m in r.messages],
                )
    except BaseException as err:
        report["error"] = describe(err)
    report.update(seen)
    print(json.dumps(report))


asyncio.run(main())
