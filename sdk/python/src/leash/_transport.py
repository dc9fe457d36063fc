"""The HTTP clients the SDK uses, hardened once: TLS with the platform's roots plus an
optional CA bundle, no redirects, no proxies from the environment (a proxy or a redirect
could swap keys or hide revocations), and one place that turns transport failures into
:class:`LeashError` without echoing a secret."""

from __future__ import annotations

import json
import re
import ssl
import time
from typing import Any, TypeVar

import anyio
import httpx

from ._flows import Answer, Flow, Pause, Request
from .errors import BAD_ANSWER, BAD_TOKEN, UNREACHABLE, LeashError

T = TypeVar("T")

#: Seconds an ordinary request may take, answer included.
DEFAULT_TIMEOUT = 30.0
#: Largest answer read from the broker (a tool's result included).
MAX_ANSWER = 32 * 1024 * 1024


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The platform's trust store, plus the CA certificates of ``ca_bundle`` (a PEM
    file) for a broker whose certificate a private CA signed."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def client_options(ca_bundle: str | None, timeout: float) -> dict[str, Any]:
    """Options shared by the blocking and the async client."""
    return {
        "verify": tls_context(ca_bundle),
        "trust_env": False,
        "follow_redirects": False,
        "timeout": timeout,
        "headers": {"User-Agent": "leash-sdk-python/0.1"},
    }


def _build(base: str, request: Request) -> dict[str, Any]:
    headers = dict(request.headers)
    if request.bearer:
        headers["Authorization"] = f"Bearer {checked_bearer(request.bearer)}"
    options: dict[str, Any] = {"headers": headers}
    if request.body is not None:
        headers["Content-Type"] = "application/json"
        options["content"] = encode_json(request.body)
    if request.timeout is not None:
        options["timeout"] = request.timeout
    return {"method": request.method, "url": base + request.path, **options}


def _deadline(http: httpx.Client | httpx.AsyncClient, request: Request) -> float:
    """When the whole answer must be in: the request's own timeout (long-polls) or the
    client's, counted once for the exchange rather than per read, so an answer trickled a
    byte at a time cannot hold the caller."""
    seconds = request.timeout if request.timeout is not None else http.timeout.read
    return time.monotonic() + (seconds if seconds is not None else DEFAULT_TIMEOUT)


class _Body:
    """An answer being read, within its deadline and :data:`MAX_ANSWER`."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.chunks: list[bytes] = []
        self.size = 0

    def take(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if time.monotonic() > self.deadline:
            raise LeashError(0, UNREACHABLE, "the broker's answer did not arrive in time")
        if self.size > MAX_ANSWER:
            raise LeashError(0, BAD_ANSWER, f"the broker's answer is over {MAX_ANSWER} bytes")

    def bytes(self) -> bytes:
        return b"".join(self.chunks)


_BEARER = re.compile(r"[\x21-\x7e]+")


def checked_bearer(bearer: str) -> str:
    """A credential or token fit for a header: printable ASCII, no spaces. Anything else
    is refused here, without echoing it (httpx would put it in its error message)."""
    if not _BEARER.fullmatch(bearer):
        raise LeashError(0, BAD_TOKEN, "the credential or token holds characters a header cannot")
    return bearer


def encode_json(body: Any) -> bytes:
    """The request body as strict JSON (no NaN or infinity, valid Unicode)."""
    try:
        return json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:  # UnicodeEncodeError included
        raise LeashError(400, "bad_request", f"the arguments are not JSON: {err}") from None


#: What parsing a malformed broker answer inside a flow can raise.
_MALFORMED = (TypeError, ValueError, AttributeError, KeyError, RecursionError, OverflowError)


def _malformed(err: Exception) -> LeashError:
    return LeashError(0, BAD_ANSWER, f"malformed answer from the broker: {type(err).__name__}")


def _unreachable(err: httpx.HTTPError) -> LeashError:
    # httpx's message names the URL and the failure; bearers were checked before sending.
    return LeashError(0, UNREACHABLE, f"cannot reach the broker: {type(err).__name__}: {err}")


def run(flow: Flow[T], http: httpx.Client, base: str) -> T:
    """Runs a protocol flow with a blocking client."""
    step = next(flow)
    while True:
        try:
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                step = flow.send(None)
                continue
            body = _Body(_deadline(http, step))
            try:
                with http.stream(**_build(base, step)) as response:
                    for chunk in response.iter_bytes():
                        body.take(chunk)
            except httpx.HTTPError as err:
                raise _unreachable(err) from None
            try:
                step = flow.send(Answer(response.status_code, body.bytes()))
            except _MALFORMED as err:
                raise _malformed(err) from None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_async(flow: Flow[T], http: httpx.AsyncClient, base: str) -> T:
    """Runs a protocol flow with an async client."""
    step = next(flow)
    while True:
        try:
            if isinstance(step, Pause):
                await anyio.sleep(step.seconds)
                step = flow.send(None)
                continue
            body = _Body(_deadline(http, step))
            try:
                async with http.stream(**_build(base, step)) as response:
                    async for chunk in response.aiter_bytes():
                        body.take(chunk)
            except httpx.HTTPError as err:
                raise _unreachable(err) from None
            try:
                step = flow.send(Answer(response.status_code, body.bytes()))
            except _MALFORMED as err:
                raise _malformed(err) from None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
