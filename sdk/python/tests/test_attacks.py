"""Attacks on the Python SDK, each written as the contract it must keep (the attack is
refused). A test marked ``xfail(strict=True, reason="FINDING: …")`` is an attack that
works today: the marker keeps the suite green, and removing it once fixed turns the test
into a regression test.

Three set-ups: the real broker and the example FastAPI tool server (``conftest``); a
*fake broker* in a thread whose keys, feed and answers the test controls (a malicious
broker, or a network attacker between the SDK and the broker), holding the root and the
forwarding private keys so tests can mint capabilities; and the ASGI middleware driven
directly with crafted scopes and body messages (what a hostile client can make a server
hand it)."""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import biscuit_auth as b
import httpx
import pytest
from conftest import API_KEY, BrokerProcess
from fastapi import FastAPI, Form, Request
from helpers import Approver

import leash
from leash import capability as cap
from leash import verifier as verifier_module
from leash.asgi import RequireCapability
from leash.integrations import langchain as lc
from leash.integrations import openai_agents as oa

# --- a fake broker ---------------------------------------------------------------------

#: An answer of the fake broker: status, body, extra headers.
Reply = tuple[int, bytes, dict[str, str]]


def js(status: int, value: Any) -> Reply:
    return status, json.dumps(value).encode(), {"Content-Type": "application/json"}


DEEP = b"[" * 100_000 + b"]" * 100_000


@dataclass
class Seen:
    """A request the fake broker received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeBroker:
    """A broker in a thread: ``/.well-known/leash/keys`` from its own key pairs (or
    ``keys_body``), a long-polled ``/v1/revocations`` (or ``feed_mode``), and whatever
    ``routes`` answer. Every request is recorded in ``seen``."""

    def __init__(self) -> None:
        self.root = b.KeyPair()
        self.kid = 0
        self.forwarding: b.KeyPair | None = b.KeyPair()
        self.keys_body: bytes | None = None
        self.revoked: list[dict[str, Any]] = []
        self.feed_mode = "ok"  # "ok", "error", "hang", or raw bytes in feed_body
        self.feed_body: bytes | None = None
        self.trickle = 0.0  # seconds between bytes of route answers
        self.routes: dict[tuple[str, str], Callable[[Seen], Reply]] = {}
        self.seen: list[Seen] = []
        self._changed = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers.items()), body)
                fake.seen.append(seen)
                status, payload, headers = fake.answer(seen)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(payload)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                if fake.trickle and not seen.path.startswith(("/v1/revocations", "/.well")):
                    for i in range(len(payload)):
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                        time.sleep(fake.trickle)
                else:
                    self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # ---- what it answers ----

    def keys_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "keys": [
                {"kid": self.kid, "algorithm": "ed25519", "public_key": str(self.root.public_key)}
            ]
        }
        if self.forwarding is not None:
            document["forwarding_key"] = str(self.forwarding.public_key)
        return document

    def answer(self, seen: Seen) -> Reply:
        parts = urlsplit(seen.path)
        if parts.path == "/.well-known/leash/keys":
            if self.keys_body is not None:
                return 200, self.keys_body, {"Content-Type": "application/json"}
            return js(200, self.keys_document())
        if parts.path == "/v1/revocations":
            return self.feed(parse_qs(parts.query))
        route = self.routes.get((seen.method, parts.path))
        if route is None:
            return js(404, {"error": {"code": "not_found", "message": "no such route"}})
        return route(seen)

    def feed(self, query: Mapping[str, list[str]]) -> Reply:
        if self.feed_mode == "error":
            return js(500, {"error": {"code": "internal", "message": "down"}})
        if self.feed_mode == "hang":
            time.sleep(30)
        if self.feed_body is not None:
            return 200, self.feed_body, {"Content-Type": "application/json"}
        after = int(query.get("after", ["0"])[0])
        deadline = time.monotonic() + min(int(query.get("wait", ["0"])[0]), 30)
        with self._changed:
            while len(self.revoked) <= after and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            page = [{"seq": i + 1, **r} for i, r in enumerate(self.revoked) if i >= after]
        return js(200, {"revocations": page, "next": after + len(page)})

    def revoke(self, revocation_id: str) -> None:
        with self._changed:
            self.revoked.append(
                {"revocation_id": revocation_id, "task_id": "tsk_1", "at": "2026-01-01T00:00:00Z"}
            )
            self._changed.notify_all()

    # ---- tokens ----

    def task_token(
        self,
        tools: Sequence[str] = ("notes.search", "notes.read"),
        *,
        extra: str = "",
        ttl: int = 600,
    ) -> b.Biscuit:
        until = _dt.datetime.now(tz=_dt.timezone.utc) + _dt.timedelta(seconds=ttl)
        source = 'task("tsk_1"); agent("bot"); check if time($t), $t <= {until}; ' + extra
        builder = b.BiscuitBuilder(source, {"until": until})
        for tool in tools:
            builder.add_fact(b.Fact("tool({t})", {"t": tool}))
        builder.set_root_key_id(self.kid)
        token = builder.build(self.root.private_key)
        # Re-read as a verifier would (an appendable, verified token).
        return b.Biscuit.from_base64(token.to_base64(), self.root.public_key)

    def forwarded(
        self, token: b.Biscuit, tool: str, *, ttl: int = 30, key: b.KeyPair | None = None
    ) -> str:
        """What Leash attaches upstream: ``token`` plus a block signed by the forwarding
        key (or ``key``) naming ``tool``, for ``ttl`` seconds."""
        signer = key or self.forwarding
        assert signer is not None
        until = _dt.datetime.now(tz=_dt.timezone.utc) + _dt.timedelta(seconds=ttl)
        block = b.BlockBuilder(
            "forwarded({t}); check if call({t}); check if time($x), $x <= {u};",
            {"t": tool, "u": until},
        )
        signed = token.third_party_request().create_block(signer.private_key, block)
        return str(token.append_third_party(signer.public_key, signed).to_base64())

    def close(self) -> None:
        with self._changed:
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    server = FakeBroker()
    yield server
    server.close()


def active_task(fake: FakeBroker, token: str = "") -> None:
    """Makes ``POST /v1/tasks`` open an active task with ``token`` (a real-looking one
    by default)."""
    text = token or str(fake.task_token().to_base64())
    fake.routes[("POST", "/v1/tasks")] = lambda _: js(
        201, {"task_id": "tsk_1", "state": "active", "token": text, "expires_at": None}
    )


def appended(token: str, root: b.PublicKey, code: str) -> str:
    """``token`` plus a first-party block of Datalog ``code`` (facts, rules, checks): what
    any holder can make offline."""
    parsed = b.Biscuit.from_base64(token, root)
    return str(parsed.append(b.BlockBuilder(code)).to_base64())


def third_party(token: str, root: b.PublicKey, code: str, signer: b.KeyPair) -> str:
    """``token`` plus a block of ``code`` signed by ``signer`` as a third party."""
    parsed = b.Biscuit.from_base64(token, root)
    signed = parsed.third_party_request().create_block(signer.private_key, b.BlockBuilder(code))
    return str(parsed.append_third_party(signer.public_key, signed).to_base64())


# --- the real broker -------------------------------------------------------------------


def root_key(broker: BrokerProcess, token: str) -> b.PublicKey:
    keys = cap.public_keys(broker.http.get(broker.url + "/.well-known/leash/keys").json())
    kid = cap.root_key_id(token)
    assert kid is not None
    key: b.PublicKey = keys[kid]
    return key


def upstream_post(
    broker: BrokerProcess,
    path: str,
    capability: str,
    body: bytes | Any,
    *,
    method: str = "POST",
) -> httpx.Response:
    """A request straight to the example tool server, as a client holding ``capability``
    (and the upstream key, as a network attacker between Leash and the server would)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Leash-Capability": capability,
        "Content-Type": "application/json",
    }
    return broker.http.request(method, broker.upstream + path, content=content, headers=headers)


@pytest.fixture
def task(broker: BrokerProcess) -> Iterator[leash.Task]:
    agent = leash.Broker(broker.url, broker.credential("research-bot"), approval_timeout=20)
    with agent.start_task("attacks", ["notes.search", "notes.read", "notes.append"]) as opened:
        yield opened
    agent.close()


def forwarded_for(broker: BrokerProcess, task: leash.Task, tool: str, args: Any) -> str:
    """The capability Leash forwarded with one real call of ``tool``."""
    task.call(tool, args)
    return broker.captured["/" + tool.split(".")[1]]


AGENT_BLOCKS = [
    pytest.param('forwarded("notes.search");', id="first-party fact"),
    pytest.param("forwarded($t) <- call($t);", id="first-party rule"),
    pytest.param("forwarded($t) <- tool($t);", id="first-party rule from the grant"),
]


@pytest.mark.parametrize("code", AGENT_BLOCKS)
def test_an_agents_own_block_does_not_make_a_task_token_look_forwarded(
    broker: BrokerProcess, task: leash.Task, code: str
) -> None:
    forged = appended(task.token, root_key(broker, task.token), code)
    answer = upstream_post(broker, "/search", forged, {"query": "leash"})
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "capability_denied"


@pytest.mark.parametrize(
    "code",
    [
        'forwarded("notes.search");',
        "forwarded($t) <- call($t);",
    ],
)
def test_a_block_the_agent_signs_as_a_third_party_is_not_the_brokers(
    broker: BrokerProcess, task: leash.Task, code: str
) -> None:
    forged = third_party(task.token, root_key(broker, task.token), code, b.KeyPair())
    answer = upstream_post(broker, "/search", forged, {"query": "leash"})
    assert answer.status_code == 403, answer.text
    assert "not forwarded by Leash" in answer.json()["error"]["message"]


def test_credentials_are_not_task_capabilities_even_for_a_lenient_verifier(
    broker: BrokerProcess,
) -> None:
    credentials = [broker.credential("research-bot"), broker.approver("mallory")]
    with leash.Verifier(broker.url, accept_raw_task_tokens=True) as lenient:
        for credential in credentials:
            with pytest.raises(leash.CapabilityRefused) as refused:
                lenient.verify(credential, "notes.search", {"query": "x"})
            assert (refused.value.status, refused.value.code) == (401, "token_invalid")


def test_a_forwarded_capability_cannot_be_widened_to_another_tool(
    broker: BrokerProcess, task: leash.Task
) -> None:
    capability = forwarded_for(broker, task, "notes.search", {"query": "leash"})
    root = root_key(broker, capability)
    attempts = {
        "as is": capability,
        "first-party fact": appended(capability, root, 'forwarded("notes.read");'),
        "first-party rule": appended(capability, root, "forwarded($t) <- call($t);"),
        "third-party fact": third_party(
            capability, root, 'forwarded("notes.read"); forwarded("notes.append");', b.KeyPair()
        ),
    }
    for name, attempt in attempts.items():
        for path, body in [
            ("/read", {"path": "/notes/leash"}),
            ("/append", {"path": "/notes/zzz", "text": "x"}),
        ]:
            answer = upstream_post(broker, path, attempt, body)
            assert answer.status_code == 403, (name, path, answer.text)
            assert answer.json()["error"]["code"] == "capability_denied"


def test_a_childs_argument_checks_hold_at_the_tool_server_whatever_body_is_sent(
    broker: BrokerProcess, task: leash.Task
) -> None:
    child = leash.Task.from_token(
        broker.url, task.attenuate(['check if arg("query", $q), $q.starts_with("le")'])
    )
    capability = forwarded_for(broker, child, "notes.search", {"query": "leash"})
    for body in [
        b'{"query": "biscuit"}',
        b'{"query": "leash", "query": "biscuit"}',  # the last key wins, for both parsers
        b'{"query": "\\u006ceash", "query": "biscuit"}',
        b'{"QUERY": "leash", "query": "biscuit"}',
        b'{"query": ["leash"]}',
        b'{"query": {"le": 1}}',
        b'{"query": null}',
        b"{}",
        b"",
    ]:
        answer = upstream_post(broker, "/search", capability, body)
        assert answer.status_code in (400, 403), (body, answer.text)
    # Duplicates the other way round: both parsers take the last, which was checked.
    fine = upstream_post(broker, "/search", capability, b'{"query": "biscuit", "query": "leash"}')
    assert fine.status_code == 200, fine.text
    assert {hit["path"] for hit in fine.json()["hits"]} == {"/notes/leash"}
    child.close()


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: the forwarded capability names the tool and a 30 s window but not the "
    "arguments (and the broker reuses it for every call of the token and tool): a captured "
    "Leash-Capability of an approved notes.append call is replayed with other arguments, "
    "skipping the per-call approval and the schema",
)
def test_a_forwarded_capability_admits_only_the_arguments_leash_checked(
    broker: BrokerProcess, task: leash.Task
) -> None:
    purpose = "attacks"
    with Approver(broker, "call", purpose):
        task.call("notes.append", {"path": "/notes/zzz-approved", "text": "approved"})
    capability = broker.captured["/append"]
    replay = upstream_post(
        broker,
        "/append",
        capability,
        {"path": "/notes/zzz-injected", "text": "never approved", "extra": "x" * 300},
    )
    assert replay.status_code == 403, replay.text


# --- the ASGI middleware, driven with crafted requests -------------------------------


@dataclass
class AsgiReply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    messages: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


def scope_of(
    path: str = "/search",
    *,
    method: str = "POST",
    headers: Sequence[tuple[bytes, bytes]] = (),
    query: bytes = b"",
    root_path: str = "",
    kind: str = "http",
) -> dict[str, Any]:
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": root_path,
        "headers": list(headers),
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }


def drive(app: Any, scope: dict[str, Any], chunks: Sequence[bytes] = (b"",)) -> AsgiReply:
    """Runs one request through ``app``: the body arrives in ``chunks``, then the client
    is gone."""
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if scope["type"] == "websocket":
        incoming = [{"type": "websocket.connect"}]
    sent: list[Mapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        await app(scope, receive, send)

    anyio.run(main)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if start is None:
        return AsgiReply(0, body, [], sent)
    return AsgiReply(int(start["status"]), body, list(start.get("headers", [])), sent)


class RecordingVerifier(leash.Verifier):
    """A verifier that remembers the arguments each verification was asked about."""

    checked: list[Any]

    def verify_accepting(
        self,
        capability_text: str | None,
        tool: str,
        arguments: Mapping[str, Any] | None,
        accept_raw: bool,
    ) -> leash.VerifiedCapability:
        self.checked.append(copy.deepcopy(arguments))
        return super().verify_accepting(capability_text, tool, arguments, accept_raw)


class ToolApp:
    """A FastAPI tool server that records what each handler acted on."""

    def __init__(self) -> None:
        self.acted: list[tuple[str, str, Any]] = []
        app = FastAPI()
        acted = self.acted

        @app.post("/search")
        async def search(request: Request) -> dict[str, Any]:
            acted.append(("POST", "/search", await request.json()))
            return {"ok": True}

        @app.get("/search")
        async def search_by_query(query: str = "") -> dict[str, Any]:
            acted.append(("GET", "/search", {"query": query}))
            return {"ok": True}

        @app.post("/read")
        async def read(request: Request) -> dict[str, Any]:
            acted.append(("POST", "/read", await request.json()))
            return {"ok": True}

        @app.delete("/read")
        async def delete(request: Request) -> dict[str, Any]:
            acted.append(("DELETE", "/read", await request.json()))
            return {"deleted": True}

        @app.post("/form")
        async def form(query: str = Form()) -> dict[str, Any]:
            acted.append(("POST", "/form", {"query": query}))
            return {"ok": True}

        self.app = app


@dataclass
class Protected:
    fake: FakeBroker
    verifier: RecordingVerifier
    tool_app: ToolApp
    app: RequireCapability
    #: A forwarded capability for notes.search (no argument checks).
    search: str
    #: A forwarded capability for notes.read.
    read: str

    def headers(
        self, capability: str | None = None, content_type: bytes | None = b"application/json"
    ) -> list[tuple[bytes, bytes]]:
        headers = [(b"leash-capability", (capability or self.search).encode())]
        if content_type is not None:
            headers.append((b"content-type", content_type))
        return headers


@pytest.fixture(scope="module")
def protected() -> Iterator[Protected]:
    fake = FakeBroker()
    verifier = RecordingVerifier(fake.url)
    verifier.checked = []
    tool_app = ToolApp()
    tools = {"/search": "notes.search", "/read": "notes.read", "/form": "notes.search"}
    app = RequireCapability(tool_app.app, verifier, tools=tools, public=["/healthz"])
    token = fake.task_token()
    search, read = fake.forwarded(token, "notes.search"), fake.forwarded(token, "notes.read")
    yield Protected(fake, verifier, tool_app, app, search, read)
    verifier.close()
    fake.close()


@pytest.fixture
def guarded(protected: Protected) -> Protected:
    protected.tool_app.acted.clear()
    protected.verifier.checked.clear()
    return protected


JSON_BODIES = [
    b'{"query": "a", "query": "b"}',
    b'{"query": "\\u0062", "query": "\\ud83d\\ude00"}',
    b'{"query": "x\\u0000y"}',
    b'{"query": 1e2, "n": -0.0, "big": 18446744073709551616, "neg": -9223372036854775809}',
    b'\xef\xbb\xbf{"query": "bom"}',
    '{"query": "utf-16"}'.encode("utf-16"),
    b'  {"query": {"a": [1, {"b": null}], "a": true}}  ',
]


@pytest.mark.parametrize("body", JSON_BODIES)
def test_the_app_acts_on_exactly_the_arguments_that_were_verified(
    guarded: Protected, body: bytes
) -> None:
    reply = drive(guarded.app, scope_of(headers=guarded.headers()), [body])
    if reply.status == 200:
        [(_, _, acted)] = guarded.tool_app.acted
        assert guarded.verifier.checked == [acted]
    else:
        assert guarded.tool_app.acted == []


@pytest.mark.parametrize(
    ("content_types", "body"),
    [
        ([b"application/x-www-form-urlencoded"], b"query=x"),
        (
            [b"multipart/form-data; boundary=B"],
            b'--B\r\nContent-Disposition: form-data; name="query"\r\n\r\nx\r\n--B--\r\n',
        ),
        ([b"text/plain"], b'{"query": "x"}'),
        ([b"application/json", b"application/x-www-form-urlencoded"], b"query=x"),
        ([b"application/json", b"application/x-www-form-urlencoded"], b'{"query": "x"}'),
        ([b"application/x-www-form-urlencoded+json"], b'{"query": "x"}'),
        ([b"multipart/form-data+json; boundary=B"], b'{"query": "x"}'),
        ([], b"query=x"),
    ],
)
def test_no_encoding_but_the_verified_json_reaches_a_form_handler(
    guarded: Protected, content_types: list[bytes], body: bytes
) -> None:
    headers = guarded.headers(content_type=None)
    headers += [(b"content-type", kind) for kind in content_types]
    reply = drive(guarded.app, scope_of("/form", headers=headers), [body])
    assert reply.status != 200, reply.body
    assert guarded.tool_app.acted == []


def test_a_body_streamed_in_pieces_is_verified_whole(guarded: Protected) -> None:
    body = b'{"query": "one byte at a time"}'
    reply = drive(guarded.app, scope_of(headers=guarded.headers()), [bytes([c]) for c in body])
    assert reply.status == 200, reply.body
    assert guarded.tool_app.acted == [("POST", "/search", {"query": "one byte at a time"})]


def test_a_body_over_the_limit_in_small_pieces_is_refused(guarded: Protected) -> None:
    small = RequireCapability(
        guarded.tool_app.app, guarded.verifier, tools={"/search": "notes.search"}, max_body=64
    )
    body = b'{"query": "' + b"x" * 200 + b'"}'
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    reply = drive(small, scope_of(headers=guarded.headers()), pieces)
    assert (reply.status, reply.code) == (413, "payload_too_large")
    assert guarded.tool_app.acted == []
    assert guarded.verifier.checked == []


def test_the_leash_capability_header_wins_and_never_falls_back(guarded: Protected) -> None:
    body = [b'{"query": "x"}']
    # A notes.read capability in Leash-Capability, a notes.search one in Authorization.
    both = [
        (b"authorization", b"Bearer " + guarded.search.encode()),
        (b"leash-capability", guarded.read.encode()),
        (b"content-type", b"application/json"),
    ]
    assert drive(guarded.app, scope_of(headers=both), body).status == 403
    # An empty Leash-Capability does not fall back to Authorization.
    empty = [(b"leash-capability", b""), *both[:1], both[2]]
    assert drive(guarded.app, scope_of(headers=empty), body).status == 401
    # Two Leash-Capability headers: the first one counts, not "any that passes".
    two = [(b"leash-capability", b"garbage"), (b"leash-capability", guarded.search.encode())]
    assert drive(guarded.app, scope_of(headers=two), body).status == 401
    # Header names that are not lower case (as no ASGI server sends them) count for nothing.
    upper = [(b"Leash-Capability", guarded.search.encode())]
    assert drive(guarded.app, scope_of(headers=upper), body).status == 401
    assert guarded.tool_app.acted == []
    # Sanity: the capability itself is fine, in either header.
    bearer = [(b"authorization", b"bearer " + guarded.search.encode())]
    assert drive(guarded.app, scope_of(headers=bearer), body).status == 200


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/search/", ""),
        ("/Search", ""),
        ("//search", ""),
        ("/search/../read", ""),
        ("/read/../search", ""),
        ("/search;x", ""),
        ("/search%2F", ""),
        ("", ""),
        ("/api/search", "/api"),  # mounted under a root path: fail closed, not open
    ],
)
def test_a_path_that_is_not_exactly_a_mapped_one_is_refused(
    guarded: Protected, path: str, root_path: str
) -> None:
    reply = drive(
        guarded.app,
        scope_of(path, headers=guarded.headers(), root_path=root_path),
        [b'{"query": "x"}'],
    )
    assert (reply.status, reply.code) == (403, "forbidden")
    assert guarded.tool_app.acted == []


def test_percent_encoded_paths_map_to_the_tool_the_app_routes_them_to(
    broker: BrokerProcess, task: leash.Task
) -> None:
    """Through uvicorn: ``/%72ead`` is ``/read`` for the middleware and for Starlette
    alike, so a notes.search capability does not reach the read handler."""
    capability = forwarded_for(broker, task, "notes.search", {"query": "leash"})
    for path in ["/%72ead", "/%2Fread", "/search%2F..%2Fread", "/search/%2E%2E/read"]:
        answer = upstream_post(broker, path, capability, {"path": "/notes/leash"})
        assert answer.status_code == 403, (path, answer.text)
    assert upstream_post(broker, "/%73earch", capability, {"query": "x"}).status_code == 200


def test_a_tool_path_admits_only_the_method_leash_forwards_with(guarded: Protected) -> None:
    delete = drive(
        guarded.app,
        scope_of("/read", method="DELETE", headers=guarded.headers(guarded.read)),
        [b'{"path": "/notes/leash"}'],
    )
    get = drive(
        guarded.app,
        scope_of("/search", method="GET", headers=guarded.headers(), query=b"query=unverified"),
    )
    assert guarded.tool_app.acted == [], (delete.status, get.status)


def test_a_websocket_to_a_protected_path_is_closed_unopened(guarded: Protected) -> None:
    for path in ["/search", "/unmapped"]:
        reply = drive(guarded.app, scope_of(path, headers=guarded.headers(), kind="websocket"))
        assert [dict(m) for m in reply.messages] == [{"type": "websocket.close", "code": 1008}]
    assert guarded.tool_app.acted == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": NaN}',
        b'{"query": Infinity}',
        b'{"query": -Infinity}',
        b'{"query": 1e400}',
        b'{"query": -1e400}',
        b'{"query": "\\ud800"}',
        b'{"query": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
        b'{"query": "\xff"}',
        b'{"\\udc00": 1}',
        b'{"query": ' + b"1" * 5000 + b"}",
        b'{"query": ' + b"[" * 33 + b"]" * 33 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'["query", "x"]',
        b'"query"',
        b'{"query": "x"',
    ],
)
def test_json_the_vocabulary_cannot_express_never_reaches_the_app(
    guarded: Protected, body: bytes
) -> None:
    reply = drive(guarded.app, scope_of(headers=guarded.headers()), [body])
    assert reply.status in (400, 403), reply.body
    assert guarded.tool_app.acted == []


def test_a_huge_arguments_object_is_refused_before_its_facts_are_built(
    protected: Protected,
) -> None:
    # Loading facts is outside the authorizer's time limit and grows faster than linearly
    # with distinct strings: the verifier refuses more than MAX_TERMS values outright.
    many = {"tags": [f"t{i}" for i in range(30_000)]}
    names = {f"a{i}": 1 for i in range(cap.MAX_TERMS + 1)}
    for arguments in (many, names):
        assert len(json.dumps(arguments)) < 1024 * 1024
        with pytest.raises(leash.CapabilityRefused) as refused:
            protected.verifier.verify(protected.search, "notes.search", arguments)
        assert (refused.value.status, refused.value.code) == (400, "bad_request")
    # At the limit the call is judged (here: allowed) as usual.
    at_limit = {"tags": [f"t{i}" for i in range(cap.MAX_TERMS - 1)]}
    protected.verifier.verify(protected.search, "notes.search", at_limit)


# --- Datalog injection -----------------------------------------------------------------

INJECTIONS = [
    'x"), tool("notes.append',
    '"); allow if true; //',
    "{p0}",
    "{tool}",
    '\\"), arg("path", "/notes/a',
    "path\n check if true",
    "$p",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_strings_reach_datalog_as_data_never_as_code(fake: FakeBroker, text: str) -> None:
    token = fake.task_token(["notes.search"])
    child = b.Biscuit.from_base64(
        appended(
            str(token.to_base64()),
            fake.root.public_key,
            'check if arg("path", $p), $p == "/notes/a";',
        ),
        fake.root.public_key,
    )
    now = int(time.time())
    # Injected through an argument value, an argument name, a map key, the tool name.
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("notes.search", {"path": text}),
        ("notes.search", {text: "/notes/a"}),
        ("notes.search", {"path": {text: "/notes/a"}}),
        (f'notes.append"); call("notes.search{text}', {"path": "/notes/a"}),
        (text, {"path": "/notes/a"}),
    ]
    for tool, arguments in attempts:
        with pytest.raises(cap.BISCUIT_ERRORS):
            cap.authorize(child, tool, arguments, now)
    cap.authorize(child, "notes.search", {"path": "/notes/a", "x": text}, now)


# --- secrets ---------------------------------------------------------------------------


def test_no_secret_in_a_repr_an_error_or_a_log_record(
    broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    credential = broker.credential("research-bot")
    texts: list[str] = []
    secrets = [credential]
    with leash.Broker(broker.url, credential) as agent:
        texts.append(repr(agent))
        task = agent.start_task("secrets", ["notes.search"])
        texts.append(repr(task))
        secrets.append(task.token)
        capability = forwarded_for(broker, task, "notes.search", {"query": "leash"})
        secrets.append(capability)
        child = task.attenuate(['check if call("notes.search")'])
        secrets.append(child)
        sub = leash.Task.from_token(broker.url, child)
        texts.append(repr(sub))
        task.revoke_token(child)
        errors: list[BaseException] = []
        try:
            sub.call("notes.search", {"query": "x"})
        except leash.LeashError as err:
            errors.append(err)
        with leash.Verifier(broker.url) as verifier:
            texts.append(repr(verifier))
            for presented in (task.token, capability + "x", child):
                try:
                    verifier.verify(presented, "notes.search", {"query": "x"})
                except leash.CapabilityRefused as err:
                    errors.append(err)
        # A with block that fails and whose completion fails too logs a warning.
        dead = leash.Task(
            httpx.Client(), "http://127.0.0.1:9", task.id, task.token, None, credential
        )
        try:
            with dead:
                raise RuntimeError("the agent crashed")
        except RuntimeError as err:
            errors.append(err)
        task.complete()
        try:
            task.call("notes.search", {"query": "x"})
        except leash.LeashError as err:
            errors.append(err)
        sub.close()
    assert len(errors) >= 5
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts.append(caplog.text)
    texts += [str(r.__dict__) for r in caplog.records]
    everything = "\n".join(texts)
    for secret in secrets:
        assert secret[-40:] not in everything


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(
            "SECRET-CREDENTIAL-0123\r\nX-Injected: 1",
        ),
        pytest.param(
            "SECRET-CREDENTIAL-0123\x00",
        ),
        pytest.param(
            "SECRET-CREDENTIAL-0123é",
        ),
    ],
)
def test_a_malformed_credential_is_a_leash_error_that_does_not_echo_it(
    fake: FakeBroker, credential: str
) -> None:
    active_task(fake)
    with leash.Broker(fake.url, credential) as agent, pytest.raises(leash.LeashError) as err:
        agent.start_task("x", ["notes.search"])
    shown = f"{err.value}\n{err.value!r}\n{err.value.message}"
    assert "SECRET-CREDENTIAL" not in shown


# --- the verifier's view of the broker -------------------------------------------------


@pytest.fixture
def fast_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are re-read every 0.2 s instead of every 30 s."""
    monkeypatch.setattr(verifier_module, "KEY_REFRESH", 0.2)


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def refused(verifier: leash.Verifier, capability: str, code: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            verifier.verify(capability, "notes.search", {"query": "x"})
        except leash.CapabilityRefused as err:
            return err.code == code
        return False

    return check


def test_a_closed_verifier_refuses_even_what_it_cached(fake: FakeBroker) -> None:
    capability = fake.forwarded(fake.task_token(), "notes.search")
    verifier = leash.Verifier(fake.url)
    verifier.verify(capability, "notes.search", {})
    verifier.close()
    with pytest.raises(leash.CapabilityRefused) as closed:
        verifier.verify(capability, "notes.search", {})
    assert (closed.value.status, closed.value.code) == (503, "unavailable")


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_a_feed_that_fails_or_hangs_fails_closed(fake: FakeBroker, mode: str) -> None:
    capability = fake.forwarded(fake.task_token(), "notes.search")
    with leash.Verifier(fake.url, max_staleness=1.0) as verifier:
        verifier.verify(capability, "notes.search", {})
        fake.feed_mode = mode
        assert eventually(refused(verifier, capability, "unavailable"), 4.0)
        if mode == "error":
            fake.feed_mode = "ok"
            assert eventually(lambda: verifier.staleness < 1.0, 4.0)
            verifier.verify(capability, "notes.search", {})


def test_revocation_wins_over_the_signature_cache(fake: FakeBroker) -> None:
    token = fake.task_token()
    capability = fake.forwarded(token, "notes.search")
    with leash.Verifier(fake.url) as verifier:
        for _ in range(3):
            verifier.verify(capability, "notes.search", {})  # cached from the first
        fake.revoke(str(token.revocation_ids[0]))
        assert eventually(refused(verifier, capability, "token_revoked"), 3.0)


@pytest.mark.usefixtures("fast_refresh")
def test_a_retired_root_key_stops_verifying_a_cached_capability(fake: FakeBroker) -> None:
    capability = fake.forwarded(fake.task_token(), "notes.search")
    with leash.Verifier(fake.url) as verifier:
        verifier.verify(capability, "notes.search", {})
        fake.root, fake.kid = b.KeyPair(), 1  # rotated: kid 0 is retired
        assert eventually(refused(verifier, capability, "token_invalid"), 6.0)
        verifier.verify(fake.forwarded(fake.task_token(), "notes.search"), "notes.search", {})


def test_a_key_retired_during_a_verification_does_not_stay_cached(
    fake: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    capability = fake.forwarded(fake.task_token(), "notes.search")
    verifier = leash.Verifier(fake.url)
    principal = cap.principal

    def racing(token: Any) -> tuple[str, str]:
        # The signature was checked with kid 0; now the key set changes under us.
        fake.root, fake.kid = b.KeyPair(), 1
        verifier._refresh_keys(verifier._http)
        return principal(token)

    monkeypatch.setattr(cap, "principal", racing)
    verifier.verify(capability, "notes.search", {})  # it began before the retirement
    monkeypatch.setattr(cap, "principal", principal)
    try:
        with pytest.raises(leash.CapabilityRefused) as retired:
            verifier.verify(capability, "notes.search", {})
        assert retired.value.code == "token_invalid"
    finally:
        verifier.close()


@pytest.mark.usefixtures("fast_refresh")
def test_a_forwarding_key_that_changes_or_disappears_refuses_old_capabilities(
    fake: FakeBroker,
) -> None:
    token = fake.task_token()
    capability = fake.forwarded(token, "notes.search")
    with leash.Verifier(fake.url) as verifier:
        verifier.verify(capability, "notes.search", {})
        fake.forwarding = b.KeyPair()
        assert eventually(refused(verifier, capability, "capability_denied"), 6.0)
        verifier.verify(fake.forwarded(token, "notes.search"), "notes.search", {})
        current = fake.forwarded(token, "notes.search")
        verifier.verify(current, "notes.search", {})
        fake.forwarding = None
        assert eventually(refused(verifier, current, "capability_denied"), 6.0)


def test_what_the_forwarding_key_did_not_sign_for_now_is_refused(fake: FakeBroker) -> None:
    token = fake.task_token()
    assert fake.forwarding is not None
    cases = {
        "expired": fake.forwarded(token, "notes.search", ttl=-5),
        "another tool": fake.forwarded(token, "notes.read"),
        "another key": fake.forwarded(token, "notes.search", key=b.KeyPair()),
        "forwarded fact in the authority block": str(
            fake.task_token(extra='forwarded("notes.search");').to_base64()
        ),
        "the root key as third party": fake.forwarded(token, "notes.search", key=fake.root),
    }
    with leash.Verifier(fake.url) as verifier:
        for name, capability in cases.items():
            with pytest.raises(leash.CapabilityRefused) as denied:
                verifier.verify(capability, "notes.search", {})
            assert denied.value.code == "capability_denied", name


# --- a malicious broker ----------------------------------------------------------------

GOOD_KEY = str(b.KeyPair().public_key)


def _finding(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"FINDING: {reason}")


@pytest.mark.parametrize(
    ("keys", "feed"),
    [
        pytest.param(b"<html>", None, id="keys not JSON"),
        pytest.param(b"[]", None, id="keys a list"),
        pytest.param(b'{"keys": 5}', None, id="keys not a list"),
        pytest.param(b'{"keys": [{"kid": "x", "public_key": "y"}]}', None, id="bad kid"),
        pytest.param(
            b'{"keys": [{"kid": 0, "public_key": "ed25519/zz"}]}', None, id="bad public key"
        ),
        pytest.param(
            json.dumps({"keys": [], "forwarding_key": 5}).encode(), None, id="bad forwarding key"
        ),
        pytest.param(
            b'{"keys": [{"kid": 1e400, "public_key": "' + GOOD_KEY.encode() + b'"}]}',
            None,
            id="kid 1e400",
        ),
        pytest.param(
            DEEP,
            None,
            id="keys nested deep",
        ),
        pytest.param(None, b"<html>", id="feed not JSON"),
        pytest.param(None, b'{"revocations": 5, "next": 0}', id="feed not a list"),
        pytest.param(None, b'{"revocations": [{"x": 1}], "next": 0}', id="entry without id"),
        pytest.param(
            None,
            b'{"revocations": [], "next": 1e400}',
            id="next 1e400",
        ),
        pytest.param(
            None,
            DEEP,
            id="feed nested deep",
        ),
    ],
)
def test_a_verifier_meeting_a_bad_broker_answer_raises_leash_error(
    fake: FakeBroker, keys: bytes | None, feed: bytes | None
) -> None:
    fake.keys_body, fake.feed_body = keys, feed
    with pytest.raises(leash.LeashError) as err:
        leash.Verifier(fake.url).close()
    assert err.value.code == "unreachable"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.usefixtures("fast_refresh")
def test_the_feed_follower_outlives_a_bad_key_document(fake: FakeBroker) -> None:
    capability = fake.forwarded(fake.task_token(), "notes.search")
    with leash.Verifier(fake.url, max_staleness=1.0) as verifier:
        verifier.verify(capability, "notes.search", {})
        fake.keys_body = DEEP
        time.sleep(1.0)
        fake.keys_body = None
        assert eventually(lambda: verifier.staleness < 1.0, 4.0)
        verifier.verify(capability, "notes.search", {})


def started_task(fake: FakeBroker, credential: str = "agent-credential") -> leash.Task:
    active_task(fake)
    return leash.Broker(fake.url, credential).start_task("x", ["notes.search"])


def call_tools(task: leash.Task) -> object:
    return task.tools()


def call_renew(task: leash.Task) -> object:
    task.renew(60)
    return None


def call_call(task: leash.Task) -> object:
    return task.call("notes.search", {"query": "x"})


def call_attenuate(task: leash.Task) -> object:
    task._root_keys.clear()
    return task.attenuate(['check if call("notes.search")'])


@pytest.mark.parametrize(
    ("route", "reply", "operation"),
    [
        pytest.param(("POST", "/v1/tasks"), (201, b"<html>", {}), None, id="task not JSON"),
        pytest.param(("POST", "/v1/tasks"), (201, b"[]", {}), None, id="task a list"),
        pytest.param(
            ("POST", "/v1/tasks"),
            js(201, {"task_id": "t", "state": "active"}),
            None,
            id="active task without token",
        ),
        pytest.param(
            ("POST", "/v1/tasks"),
            js(201, {"task_id": "t", "state": "exploded"}),
            None,
            id="unknown state",
        ),
        pytest.param(
            ("POST", "/v1/tasks"),
            (307, b"", {"Location": "http://127.0.0.1:9/v1/tasks"}),
            None,
            id="redirect",
        ),
        pytest.param(
            ("POST", "/v1/tasks"),
            (500, DEEP, {}),
            None,
            id="error body nested deep",
        ),
        pytest.param(
            ("GET", "/v1/tools"), js(200, {"tools": 5}), call_tools, id="tools not a list"
        ),
        pytest.param(
            ("GET", "/v1/tools"), js(200, {"tools": [5]}), call_tools, id="tool not an object"
        ),
        pytest.param(
            ("GET", "/v1/tools"),
            js(200, {"tools": [{"name": "x", "input_schema": [1, 2]}]}),
            call_tools,
            id="schema a list",
        ),
        pytest.param(
            ("GET", "/v1/tools"),
            js(200, {"tools": [{"name": "x", "input_schema": "ab"}]}),
            call_tools,
            id="schema a string",
        ),
        pytest.param(
            ("POST", "/v1/tasks/tsk_1/renew"),
            js(202, []),
            call_renew,
            id="renewal pending as a list",
        ),
        pytest.param(
            ("POST", "/v1/tools/notes.search/call"), js(200, {"x": 1}), call_call, id="no result"
        ),
        pytest.param(
            ("POST", "/v1/tools/notes.search/call"),
            js(202, {"state": "pending_approval"}),
            call_call,
            id="held call without approval id",
        ),
        pytest.param(
            ("GET", "/.well-known/leash/keys"),
            (200, b'{"keys": [{"kid": 1e400, "public_key": "x"}]}', {}),
            call_attenuate,
            id="kid 1e400 when attenuating",
        ),
    ],
)
def test_an_agent_meeting_a_bad_broker_answer_raises_leash_error(
    fake: FakeBroker,
    route: tuple[str, str],
    reply: Reply,
    operation: Callable[[leash.Task], object] | None,
) -> None:
    if operation is None:
        fake.routes[route] = lambda _: reply
        with pytest.raises(leash.LeashError):
            leash.Broker(fake.url, "agent-credential").start_task("x", ["notes.search"])
        return
    task = started_task(fake)
    if route[1] == "/.well-known/leash/keys":
        fake.keys_body = reply[1]
    else:
        fake.routes[route] = lambda _: reply
    with pytest.raises(leash.LeashError):
        operation(task)


def test_agent_flows_follow_no_redirect(fake: FakeBroker) -> None:
    other = FakeBroker()
    try:
        location = {"Location": other.url + "/v1/tasks"}
        fake.routes[("POST", "/v1/tasks")] = lambda _: (307, b"", location)
        with pytest.raises(leash.LeashError) as err:
            leash.Broker(fake.url, "agent-credential").start_task("x", ["notes.search"])
        assert err.value.status == 307
        task = started_task(fake)
        fake.routes[("POST", "/v1/tools/notes.search/call")] = lambda _: (308, b"", location)
        with pytest.raises(leash.LeashError):
            task.call("notes.search", {"query": "x"})
        assert other.seen == []
    finally:
        other.close()


def test_neither_agents_nor_verifiers_use_proxies_from_the_environment(
    fake: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = FakeBroker()
    try:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        # Control: an ordinary httpx client does go through it.
        with httpx.Client() as ordinary:
            ordinary.get(fake.url + "/healthz")
        assert proxy.seen, "the environment proxy was not picked up at all"
        proxy.seen.clear()
        task = started_task(fake)
        fake.routes[("POST", "/v1/tools/notes.search/call")] = lambda _: js(200, {"result": 1})
        assert task.call("notes.search", {"query": "x"}) == 1
        leash.Verifier(fake.url).close()
        assert proxy.seen == []
    finally:
        proxy.close()


@pytest.mark.parametrize(
    "name",
    [
        "../tasks/tsk_1/complete",
        "notes.search/../../tasks/tsk_1/complete",
        "notes.search?x=1",
        "notes.search#x",
        "notes..search",
        ".notes",
        "notes.search/",
        "%2e%2e",
        "notes.search\n",
        "nоtes.search",  # noqa: RUF001 - a Cyrillic o
        "",
        "x" * 129,
    ],
)
def test_a_model_chosen_tool_name_cannot_leave_the_call_path(fake: FakeBroker, name: str) -> None:
    task = started_task(fake)
    fake.seen.clear()
    with pytest.raises(leash.LeashError) as err:
        task.call(name, {})
    assert (err.value.status, err.value.code) == (400, "bad_request")
    assert fake.seen == []


def test_a_task_id_cannot_leave_its_path_segment(fake: FakeBroker) -> None:
    fake.routes[("POST", "/v1/tasks")] = lambda _: js(
        201, {"task_id": "..", "state": "active", "token": "t", "expires_at": None}
    )
    with pytest.raises(leash.LeashError) as refused:
        leash.Broker(fake.url, "agent-credential").start_task("x", ["notes.search"])
    assert refused.value.code == "bad_answer"
    assert [seen.path for seen in fake.seen] == ["/v1/tasks"]


def test_a_trickling_broker_cannot_hold_an_agent_past_its_timeout(fake: FakeBroker) -> None:
    active_task(fake)
    task = leash.Broker(fake.url, "agent-credential", timeout=0.5).start_task("x", ["y"])
    fake.routes[("POST", "/v1/tools/notes.search/call")] = lambda _: js(200, {"result": 12345})
    fake.trickle = 0.2
    started = time.monotonic()
    with pytest.raises(leash.LeashError) as refused:
        task.call("notes.search", {"query": "x"})
    assert refused.value.code == "unreachable"
    # The whole answer would take 17 bytes x 0.2 s = 3.4 s; the 0.5 s deadline ends it.
    assert time.monotonic() - started < 2.5


# --- arguments JSON cannot carry: the SDK and the framework integrations ---------------

NOT_JSON = [
    pytest.param({"query": float("nan")}, id="NaN"),
    pytest.param({"query": float("inf")}, id="infinity"),
    pytest.param({"query": "\ud800"}, id="lone surrogate"),
]


@pytest.mark.parametrize("arguments", NOT_JSON)
def test_arguments_json_cannot_carry_are_a_leash_error(
    fake: FakeBroker, arguments: dict[str, Any]
) -> None:
    task = started_task(fake)
    with pytest.raises(leash.LeashError):
        task.call("notes.search", arguments)


SEARCH_INFO = leash.ToolInfo(
    "notes.search",
    "Search",
    {"type": "object", "properties": {"query": {"type": "string"}, "self": {"type": "string"}}},
)


@pytest.mark.parametrize(
    "args_json", ['{"query": NaN}', '{"query": 1e999}', '{"query": "\\ud800"}']
)
def test_openai_agents_answer_unjsonable_model_arguments_as_text(
    fake: FakeBroker, args_json: str
) -> None:
    task = started_task(fake)
    [tool] = oa.tools(task, [SEARCH_INFO])

    async def invoke() -> str:
        return str(await tool.on_invoke_tool(None, args_json))  # type: ignore[arg-type]

    assert "notes.search" in anyio.run(invoke)
    assert not [s for s in fake.seen if s.path.startswith("/v1/tools/")]


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(
            {"query": float("nan")},
        ),
        pytest.param(
            {"self": "me"},
        ),
        pytest.param({"config": 1, "run_manager": 2, "callbacks": 3, "tags": 4}, id="reserved"),
    ],
)
def test_a_langchain_tool_answers_any_model_arguments(
    fake: FakeBroker, arguments: dict[str, Any]
) -> None:
    task = started_task(fake)
    fake.routes[("POST", "/v1/tools/notes.search/call")] = lambda seen: js(
        200, {"result": json.loads(seen.body)}
    )
    [tool] = lc.tools(task, [SEARCH_INFO])
    answer = tool.invoke(arguments)
    assert answer == arguments or "Leash did not run" in str(answer)
