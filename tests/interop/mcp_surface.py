#!/usr/bin/env python3
"""An MCP client built with the official MCP Python SDK (mcp 2.x) that uses the whole
server surface through Leash's /mcp with a task token: resources, resource templates,
prompts and completions. Prints one JSON report; every request's outcome is recorded
(a refusal as its error text), so the test decides what should have happened.

Usage: mcp_surface.py URL TOKEN MODE
  MODE is "auto" (2026-07-28 `server/discover`, falling back) or "legacy" (initialize).
"""
import asyncio
import json
import sys
from typing import Any, Awaitable, Callable

from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import PromptReference, ResourceTemplateReference

url, token, mode = sys.argv[1:4]


def describe(err: BaseException) -> str:
    """The leaf errors of an exception (group), as text."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in err.exceptions)
    return "%s: %s" % (type(err).__name__, err)


async def outcome(request: Callable[[], Awaitable[Any]], shape: Callable[[Any], Any]) -> dict[str, Any]:
    try:
        return {"ok": shape(await request())}
    except Exception as err:  # a JSON-RPC error
        return {"error": describe(err)}


def contents(result: Any) -> list[str]:
    return [getattr(c, "text", None) or getattr(c, "blob", "") for c in result.contents]


async def main() -> None:
    report: dict[str, Any] = {}
    http = create_mcp_http_client(headers={"Authorization": "Bearer " + token})
    try:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            report["protocol_version"] = str(client.protocol_version)
            report["resources"] = await outcome(
                client.list_resources, lambda r: sorted(str(x.uri) for x in r.resources)
            )
            report["templates"] = await outcome(
                client.list_resource_templates, lambda r: sorted(x.uri_template for x in r.resource_templates)
            )
            report["prompts"] = await outcome(client.list_prompts, lambda r: sorted(p.name for p in r.prompts))
            for key, uri in [
                ("read_inside", "file:///docs/readme.md"),
                ("read_template", "file:///docs/guide.md"),
                ("read_outside", "file:///secret/keys.txt"),
                ("read_traversal", "file:///docs/../secret/keys.txt"),
            ]:
                report[key] = await outcome(lambda uri=uri: client.read_resource(uri), contents)
            report["prompt"] = await outcome(
                lambda: client.get_prompt("everything.summarize", {"topic": "tides"}),
                lambda r: [m.content.text for m in r.messages],
            )
            report["prompt_held"] = await outcome(
                lambda: client.get_prompt("everything.confidential", {}),
                lambda r: [m.content.text for m in r.messages],
            )
            report["prompt_bad_arguments"] = await outcome(
                lambda: client.get_prompt("everything.summarize", {"subject": "tides"}),
                lambda r: [m.content.text for m in r.messages],
            )
            report["complete_prompt"] = await outcome(
                lambda: client.complete(PromptReference(name="everything.summarize"), {"name": "topic", "value": "ti"}),
                lambda r: r.completion.values,
            )
            report["complete_held"] = await outcome(
                lambda: client.complete(PromptReference(name="everything.confidential"), {"name": "x", "value": ""}),
                lambda r: r.completion.values,
            )
            report["complete_template"] = await outcome(
                lambda: client.complete(
                    ResourceTemplateReference(uri="file:///docs/{name}"), {"name": "name", "value": "g"}
                ),
                lambda r: r.completion.values,
            )
    except BaseException as err:  # connection refused by Leash (401) ends up here
        report["error"] = describe(err)
    print(json.dumps(report))


asyncio.run(main())
