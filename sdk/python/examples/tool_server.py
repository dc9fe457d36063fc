"""A FastAPI tool server protected by the Leash verifier: the upstream behind Leash.

Tools (each takes the JSON arguments Leash forwards):
- ``POST /search`` ``{"query"}``: searches a small built-in corpus of notes (notes.search);
- ``POST /read`` ``{"path"}``: reads a note by path (notes.read);
- ``POST /append`` ``{"path", "text"}``: appends to a note (notes.append; its policy asks
  an approver for every call).

Every call must carry what Leash puts there: the upstream credential Leash injects
(``Authorization: Bearer <key>``, the key from ``TOOL_API_KEY``, default
``demo-upstream-key``), and a per-call capability (``Leash-Capability``) for that very
tool, forwarded by Leash and verified offline by :class:`leash.Verifier` against the
broker's keys and revocation feed. A task token sent here directly, skipping Leash, is
refused (403); a revoked task is refused as soon as the feed says so.

Run (after the broker): ``python examples/tool_server.py`` (127.0.0.1:9001, following the
broker at ``LEASH_URL``, default http://127.0.0.1:7070).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import leash
from leash.asgi import RequireCapability

NOTES = {
    "/notes/leash": "Leash issues task-bound Biscuit capabilities and revokes them when the "
    "task ends.",
    "/notes/biscuit": "Biscuit tokens can be attenuated offline: a holder adds checks, never "
    "rights.",
    "/notes/mcp": "The Model Context Protocol connects agents to tool servers.",
}


def create_app(verifier: leash.Verifier, api_key: str) -> RequireCapability:
    """The tool server: FastAPI routes behind the API-key check and the capability check."""
    app = FastAPI(title="notes")
    notes = dict(NOTES)
    #: Who called, per call (the tests read it through /calls).
    seen: list[dict[str, Any]] = []

    @app.middleware("http")
    async def require_api_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path == "/healthz":
            return await call_next(request)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            body = {"error": {"code": "unauthenticated", "message": "missing upstream key"}}
            return JSONResponse(body, status_code=401)
        return await call_next(request)

    def caller(request: Request, tool: str) -> None:
        verified: leash.VerifiedCapability = request.state.leash
        seen.append({"tool": tool, "task_id": verified.task_id, "agent": verified.agent})

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        caller(request, "notes.search")
        query = str((await request.json()).get("query", "")).lower()
        hits = [
            {"path": path, "text": text} for path, text in notes.items() if query in text.lower()
        ]
        return {"hits": hits}

    @app.post("/read")
    async def read(request: Request) -> Response:
        caller(request, "notes.read")
        path = str((await request.json()).get("path", ""))
        if path not in notes:
            body = {"error": {"code": "not_found", "message": f"no note {path}"}}
            return JSONResponse(body, status_code=404)
        return JSONResponse({"path": path, "text": notes[path]})

    @app.post("/append")
    async def append(request: Request) -> dict[str, Any]:
        caller(request, "notes.append")
        arguments = await request.json()
        path, text = str(arguments["path"]), str(arguments["text"])
        notes[path] = notes.get(path, "") + text
        return {"path": path, "length": len(notes[path])}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "calls": seen}

    tools = {"/search": "notes.search", "/read": "notes.read", "/append": "notes.append"}
    return RequireCapability(app, verifier, tools=tools, public=["/healthz"])


def main() -> None:
    import uvicorn

    broker = os.environ.get("LEASH_URL", "http://127.0.0.1:7070")
    api_key = os.environ.get("TOOL_API_KEY", "demo-upstream-key")
    with leash.Verifier(broker) as verifier:
        uvicorn.run(create_app(verifier, api_key), host="127.0.0.1", port=9001)


if __name__ == "__main__":
    main()
