#!/usr/bin/env python3
"""An MCP client built with the official MCP Python SDK (mcp 2.x), pointed at Leash's
/mcp with a task token, as an agent framework would be. Prints one JSON report.

Usage: mcp_client.py URL TOKEN MODE [TIMING_URL]
  MODE is "auto" (2026-07-28 `server/discover`, falling back) or "legacy" (initialize).
  With TIMING_URL (the upstream itself), also times 200 calls of `echo` straight to the
  upstream and 200 of `everything.echo` through Leash, alternating, and reports medians.
"""
import asyncio
import json
import statistics
import sys
import time

from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

url, token, mode = sys.argv[1:4]
timing_url = sys.argv[4] if len(sys.argv) > 4 else None


def connect(target, headers=None):
    transport = streamable_http_client(target, http_client=create_mcp_http_client(headers=headers or {}))
    return Client(transport, mode=mode)


def describe(err):
    """The leaf errors of an exception (group), as text."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in err.exceptions)
    return "%s: %s" % (type(err).__name__, err)


def text_of(result):
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def call(client, name, args):
    try:
        result = await client.call_tool(name, args)
        return {"is_error": bool(result.is_error), "text": text_of(result)}
    except Exception as err:  # a JSON-RPC error
        return {"protocol_error": "%s: %s" % (type(err).__name__, err)}


async def main():
    report = {}
    headers = {"Authorization": "Bearer " + token}
    try:
        async with connect(url, headers) as client:
            report["protocol_version"] = str(client.protocol_version)
            tools = await client.list_tools()
            report["tools"] = sorted(tool.name for tool in tools.tools)
            report["allowed"] = await call(client, "everything.echo", {"message": "hello through leash"})
            report["http_tool"] = await call(client, "web.search", {"query": "x"})
            report["not_in_task"] = await call(client, "everything.delete_everything", {"confirm": True})
            report["bad_arguments"] = await call(client, "everything.add", {"a": "one", "b": 2})
            report["unknown"] = await call(client, "nope.nothing", {})
            if timing_url:
                async with connect(timing_url) as direct:
                    straight, through = [], []
                    for _ in range(200):
                        started = time.perf_counter()
                        await direct.call_tool("echo", {"message": "t"})
                        straight.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        await client.call_tool("everything.echo", {"message": "t"})
                        through.append(time.perf_counter() - started)
                    report["direct_median_ms"] = statistics.median(straight) * 1000
                    report["leash_median_ms"] = statistics.median(through) * 1000
    except BaseException as err:  # connection refused by Leash (401) ends up here
        report["error"] = describe(err)
    print(json.dumps(report))


asyncio.run(main())
