"""Protecting a Starlette/FastAPI (any ASGI) tool server in one line::

    app = RequireCapability(app, verifier, tools={"/search": "notes.search"})

Each mapped path admits only calls whose ``Leash-Capability`` header (or ``Authorization:
Bearer``) holds a capability the :class:`leash.Verifier` accepts for that tool with the
request's JSON body as arguments; the app then sees the body unchanged and the
:class:`leash.VerifiedCapability` in ``request.state.leash`` (``scope["state"]["leash"]``).
Refusals use the API's error format, ``{"error": {"code", "message"}}``: 401
(missing, invalid, revoked), 403 (denied, not forwarded by Leash), 503 (stale revocation
view), 400 (bad JSON), 405 (not a POST: Leash forwards every call as one), 413 (body over
``max_body``), 415 (a body that is not
``application/json``: the app must read the very arguments that were verified). Only the
JSON body is verified: an app must not take arguments from the query string or headers.

Fail closed: a path that is neither mapped to a tool nor listed in ``public`` is refused
(403), so a route added later is not left open by accident."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from typing import Any

import anyio.to_thread

from .errors import CapabilityRefused
from .verifier import Verifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Largest body buffered for verification, by default.
MAX_BODY = 1024 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class RequireCapability:
    """ASGI middleware admitting only calls with a valid capability for the path's tool."""

    def __init__(
        self,
        app: App,
        verifier: Verifier,
        tools: Mapping[str, str],
        *,
        public: Collection[str] = (),
        accept_raw_task_tokens: bool = False,
        max_body: int = MAX_BODY,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.tools = dict(tools)
        self.public = frozenset(public)
        #: Also admit task tokens sent directly, not through Leash. Such calls skip the
        #: broker's approvals, schema checks, budgets and audit: opt in only for routes
        #: agents may call directly on purpose.
        self.accept_raw = accept_raw_task_tokens or verifier.accept_raw_task_tokens
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        path = scope.get("path", "")
        if kind not in ("http", "websocket") or path in self.public:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            # No body to verify arguments against: protected paths speak plain HTTP.
            await send({"type": "websocket.close", "code": 1008})
            return
        tool = self.tools.get(path)
        if tool is None:
            await _error(send, 403, "forbidden", "no tool is mapped to this path")
            return
        if scope.get("method") != "POST":
            # Leash forwards every call as a POST with the arguments as the JSON body; any
            # other method would reach the app with arguments nobody verified.
            await _error(send, 405, "bad_request", "a tool path takes POST only")
            return
        if not _json_content(scope):
            # The app must read the very arguments that were verified: a form or any other
            # encoding could mean something else to it.
            await _error(send, 415, "bad_request", "the body must be application/json")
            return
        body = await self._body(receive)
        if body is None:
            await _error(send, 413, "payload_too_large", "body too large")
            return
        try:
            arguments = json.loads(body, parse_constant=_reject_constant) if body else {}
        except (ValueError, RecursionError) as err:
            await _error(send, 400, "bad_request", f"invalid JSON: {err}")
            return
        token = _capability(scope)
        try:
            verified = await anyio.to_thread.run_sync(
                self.verifier.verify_accepting, token, tool, arguments, self.accept_raw
            )
        except CapabilityRefused as refused:
            await _error(send, refused.status, refused.code, refused.message)
            return
        scope.setdefault("state", {})["leash"] = verified
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # disconnected: nothing to verify against
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _json_content(scope: Scope) -> bool:
    """No content type (an empty body, or a client that sends none) or a JSON one."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            kind = str(value.decode("latin-1")).split(";", 1)[0].strip().lower()
            return kind == "application/json" or kind.endswith("+json")
    return True


def _capability(scope: Scope) -> str:
    found = ""
    for name, value in scope.get("headers", []):
        if name == b"leash-capability":
            return str(value.decode("latin-1")).strip()
        if name == b"authorization" and not found:
            text = value.decode("latin-1").strip()
            found = text[7:] if text[:7].lower() == "bearer " else text
    return found


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _error(send: Send, status: int, code: str, message: str) -> None:
    payload = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="leash"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
