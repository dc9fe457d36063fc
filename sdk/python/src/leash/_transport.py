"""The HTTP clients the SDK uses, hardened once: TLS with the platform's roots plus an
optional CA bundle, no redirects, no proxies from the environment (a proxy or a redirect
could swap keys or hide revocations), and one place that turns transport failures into
:class:`LeashError` without echoing a secret."""

from __future__ import annotations

import ssl
import time
from typing import Any, TypeVar

import anyio
import httpx

from ._flows import Answer, Flow, Pause, Request
from .errors import UNREACHABLE, LeashError

T = TypeVar("T")

#: Seconds an ordinary request may take.
DEFAULT_TIMEOUT = 30.0


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
        headers["Authorization"] = f"Bearer {request.bearer}"
    options: dict[str, Any] = {"headers": headers}
    if request.body is not None:
        options["json"] = request.body
    if request.timeout is not None:
        options["timeout"] = request.timeout
    return {"method": request.method, "url": base + request.path, **options}


def _unreachable(err: httpx.HTTPError) -> LeashError:
    # httpx's message names the URL and the failure, never a header.
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
            try:
                response = http.request(**_build(base, step))
            except httpx.HTTPError as err:
                raise _unreachable(err) from None
            step = flow.send(Answer(response.status_code, response.content))
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
            try:
                response = await http.request(**_build(base, step))
            except httpx.HTTPError as err:
                raise _unreachable(err) from None
            step = flow.send(Answer(response.status_code, response.content))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
