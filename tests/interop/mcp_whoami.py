#!/usr/bin/env python3
"""An upstream MCP server that acts for whoever's bearer token it receives, built with the
official MCP Python SDK (mcp 2.x, `MCPServer`), for the per-person upstream credential
tests. Streamable HTTP on 127.0.0.1:PORT/mcp.

`whoami` asks the provider's introspection (through the test provider's
`/test/introspect`) whether the call's bearer token is active and whose it is, and
refuses the call otherwise. Listing tools needs no token.

Usage: mcp_whoami.py PORT INTROSPECT_URL
"""
import asyncio
import json
import sys
import urllib.parse
import urllib.request

from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp.server.mcpserver import Context, MCPServer

port = int(sys.argv[1])
introspect_url = sys.argv[2]
server = MCPServer("whoami-upstream")
seen: list[dict[str, object]] = []


def introspect(token: str) -> dict[str, object]:
    body = urllib.parse.urlencode({"token": token}).encode()
    with urllib.request.urlopen(introspect_url, data=body, timeout=10) as answer:
        result: dict[str, object] = json.load(answer)
        return result


@server.tool()
async def whoami(ctx: Context) -> dict[str, object]:
    """Who the provider says the caller's bearer token belongs to."""
    request = ctx.request_context.request
    authorization = request.headers.get("authorization", "") if request is not None else ""
    if not authorization.lower().startswith("bearer "):
        raise ValueError("no bearer token")
    token = authorization[len("bearer "):]
    answer = await asyncio.to_thread(introspect, token)
    if not answer.get("active"):
        raise ValueError("the provider says this token is not active")
    seen.append({"sub": answer.get("sub"), "token": token})
    return {"sub": answer.get("sub"), "scope": answer.get("scope"), "client_id": answer.get("client_id")}


@server.custom_route("/seen", methods=["GET"])
async def seen_route(request: Request) -> JSONResponse:
    return JSONResponse(seen)


@server.custom_route("/ready", methods=["GET"])
async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


server.run(transport="streamable-http", host="127.0.0.1", port=port, stateless_http=True, json_response=True)
