"""Tool servers: verify a Leash capability offline, against the broker's public keys and
its revocation feed.

A :class:`Verifier` fetches ``/.well-known/leash/keys`` and the whole revocation feed when
it is made, then follows the feed in a background thread with long-polls (the broker
answers as soon as something is revoked). A capability is refused if any of its
revocation ids was published, and **every** capability is refused while the view of the
feed is older than ``max_staleness``: a verifier that cannot hear about revocations fails
closed. Signature checks are cached (bounded, keyed by the token's SHA-256); revocation
and the authorizer run on every call. An unknown root key id triggers one key refresh,
at most every 10 seconds.

Only capabilities the broker forwarded are accepted: the ``Leash-Capability`` header
Leash sends ends in a block signed by its forwarding key (published beside the root
keys), and the verifier requires that block's ``forwarded(tool)`` for the called tool. A
raw task token sent straight to the tool server would skip the broker's approvals, schema
checks, budgets and audit, so it is refused unless the tool server opts in with
``accept_raw_task_tokens=True``."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import biscuit_auth as _b
import httpx

from . import capability
from ._transport import client_options
from .errors import UNREACHABLE, CapabilityRefused, LeashError

_log = logging.getLogger("leash.verifier")

#: How often the key set is re-read (retired keys stop verifying within this).
KEY_REFRESH = 30.0
#: Fewest seconds between two key refreshes caused by unknown key ids.
KEY_REFRESH_LIMIT = 10.0
#: How long after its window a revoked id is still kept (clocks differ).
PRUNE_MARGIN = 300


@dataclass(frozen=True)
class VerifiedCapability:
    """A call that passed verification."""

    task_id: str
    agent: str
    tool: str
    #: ``False`` only for a raw task token accepted by opt-in.
    forwarded: bool


def _refused(status: int, code: str, message: str) -> CapabilityRefused:
    return CapabilityRefused(status, code, message)


class _LruCache:
    """Verified tokens by SHA-256 of their text, the oldest dropped past ``size``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, tuple[Any, str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> tuple[Any, str, str] | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: bytes, value: tuple[Any, str, str]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Verifier:
    """Verifies Leash capabilities for a tool server; thread-safe, share one per process.

    ``Verifier(url)`` connects at once (keys and the whole feed; a :class:`LeashError`
    with code ``unreachable`` if the broker cannot be read) and follows the feed until
    :meth:`close`. ``max_staleness`` (seconds) is how old the revocation view may get
    before everything is refused; ``ca_bundle`` adds a PEM file of CA certificates."""

    def __init__(
        self,
        url: str,
        max_staleness: float = 5.0,
        *,
        accept_raw_task_tokens: bool = False,
        ca_bundle: str | None = None,
        poll_interval: float = 0.5,
        cache_size: int = 10_000,
    ) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        self._base = url.rstrip("/")
        self.max_staleness = max_staleness
        self.accept_raw_task_tokens = accept_raw_task_tokens
        self._poll_interval = poll_interval
        #: Each long-poll is held at most half the staleness budget, so a silent broker
        #: is noticed in time; below 2 s the feed is polled instead.
        self._wait = int(min(max_staleness / 2, 30))
        options = client_options(ca_bundle, self._wait + 5.0)
        self._http = httpx.Client(**options)  # calls made by verify() (key refresh)
        self._feed_http = httpx.Client(**options)  # the follower thread's own
        self._lock = threading.Lock()
        self._keys: dict[int, Any] = {}
        self._forwarding: Any | None = None
        self._revoked: dict[str, int | None] = {}
        self._next = 0
        self._last_sync: float | None = None
        self._last_key_refresh: float | None = None
        #: Bumped whenever the key set changes: a verification that began under an older
        #: set must not cache its result (the key it used may just have been retired).
        self._key_generation = 0
        self._cache = _LruCache(cache_size)
        self._stop = threading.Event()
        self._refresh_keys(self._http)
        self._sync(self._feed_http, 0)
        self._thread = threading.Thread(target=self._follow, name="leash-verifier", daemon=True)
        self._thread.start()

    # ---- verification -------------------------------------------------------------

    @property
    def staleness(self) -> float:
        """Seconds since the revocation view was last known complete."""
        with self._lock:
            at = self._last_sync
        return float("inf") if at is None else time.monotonic() - at

    def verify(
        self, capability_text: str | None, tool: str, arguments: Mapping[str, Any] | None = None
    ) -> VerifiedCapability:
        """Verifies a capability for one call of ``tool`` with ``arguments`` (an object),
        now. Returns who is calling; raises :class:`leash.CapabilityRefused` (401, 403 or
        503, with the API's code) otherwise."""
        return self.verify_accepting(capability_text, tool, arguments, self.accept_raw_task_tokens)

    def verify_accepting(
        self,
        capability_text: str | None,
        tool: str,
        arguments: Mapping[str, Any] | None,
        accept_raw: bool,
    ) -> VerifiedCapability:
        """:meth:`verify`, with raw task tokens accepted when ``accept_raw``."""
        age = self.staleness
        if age > self.max_staleness:
            raise _refused(
                503,
                "unavailable",
                f"revocation view is {age * 1000:.0f} ms old (limit "
                f"{self.max_staleness * 1000:.0f} ms); refusing until it catches up",
            )
        text = (capability_text or "").strip()
        if not text:
            raise _refused(401, "unauthenticated", "no capability presented")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise _refused(403, "capability_denied", "the arguments must be a JSON object")
        if capability.value_count(arguments) > capability.MAX_TERMS:
            # Before any signature work: such a call cannot be judged cheaply.
            raise _refused(
                400, "bad_request", f"the arguments hold more than {capability.MAX_TERMS} values"
            )
        try:
            unverified = _b.UnverifiedBiscuit.from_base64(text)
            ids = [str(i) for i in unverified.revocation_ids]
        except capability.BISCUIT_ERRORS:
            raise _refused(401, "token_invalid", "not a Biscuit token") from None
        if self._is_revoked(ids):
            raise _refused(401, "token_revoked", "the capability was revoked")
        token, task_id, agent = self._verified(text, unverified)
        forwarding = self._forwarding_key()
        forwarded = forwarding is not None and capability.is_forwarded_by(token, forwarding)
        if not forwarded and not accept_raw:
            if forwarding is None:
                raise _refused(
                    403,
                    "capability_denied",
                    "the broker publishes no forwarding key, so no capability can be proven "
                    "forwarded by Leash, and this tool server does not accept raw task tokens",
                )
            raise _refused(
                403,
                "capability_denied",
                "not forwarded by Leash: this tool server accepts only the capability Leash "
                "attaches to a call it checked (a task token sent directly is refused)",
            )
        try:
            capability.authorize(
                token, tool, arguments, int(time.time()), forwarding if forwarded else None
            )
        except capability.ArgumentError as err:
            raise _refused(400, "bad_request", str(err)) from None
        except capability.BISCUIT_ERRORS as err:  # the refusal, with the failed checks
            raise _refused(403, "capability_denied", capability.explain(err, tool)) from None
        return VerifiedCapability(task_id, agent, tool, forwarded)

    def _verified(self, text: str, unverified: Any) -> tuple[Any, str, str]:
        key = hashlib.sha256(text.encode()).digest()
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._lock:
            generation = self._key_generation
        kid = unverified.root_key_id()
        if kid is not None and self._key(kid) is None:
            # A rotated key not seen yet: refresh once (rate limited).
            self._refresh_keys_limited()

        def root(kid: int | None) -> Any:
            public = None if kid is None else self._key(kid)
            if public is None:
                raise ValueError(f"unknown root key id {kid}")
            return public

        try:
            token = _b.Biscuit.from_base64(text, root)
        except capability.TOKEN_ERRORS as err:
            raise _refused(401, "token_invalid", f"signature: {err}") from None
        try:
            task_id, agent = capability.principal(token)
        except capability.TOKEN_ERRORS as err:
            raise _refused(401, "token_invalid", str(err)) from None
        entry = (token, task_id, agent)
        with self._lock:  # the same lock as the refresh's bump-and-clear
            if generation == self._key_generation:
                self._cache.put(key, entry)
        return entry

    # ---- state --------------------------------------------------------------------

    def _key(self, kid: int) -> Any | None:
        with self._lock:
            return self._keys.get(kid)

    def _forwarding_key(self) -> Any | None:
        with self._lock:
            return self._forwarding

    def _is_revoked(self, ids: list[str]) -> bool:
        with self._lock:
            return any(i in self._revoked for i in ids)

    def _get(self, http: httpx.Client, path: str, what: str) -> Any:
        try:
            response = http.get(self._base + path)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError, RecursionError) as err:
            raise LeashError(0, UNREACHABLE, f"cannot read {what}: {type(err).__name__}") from None

    def _refresh_keys(self, http: httpx.Client) -> None:
        document = self._get(http, "/.well-known/leash/keys", "the broker's keys")
        try:
            keys = capability.public_keys(document)
            text = document.get("forwarding_key")
            forwarding = _b.PublicKey(str(text)) if text else None
        except capability.DOCUMENT_ERRORS as err:
            raise LeashError(0, UNREACHABLE, f"bad key document: {err}") from None
        with self._lock:
            changed = {k: str(v) for k, v in keys.items()} != {
                k: str(v) for k, v in self._keys.items()
            }
            self._keys = keys
            self._forwarding = forwarding
            self._last_key_refresh = time.monotonic()
            if changed:
                # Cached verifications may rest on a key that was just retired.
                self._key_generation += 1
                self._cache.clear()

    def _refresh_keys_limited(self) -> None:
        with self._lock:
            last = self._last_key_refresh
        if last is not None and time.monotonic() - last < KEY_REFRESH_LIMIT:
            return
        try:
            self._refresh_keys(self._http)
        except LeashError as err:
            _log.warning("cannot refresh the broker's keys: %s", err.message)

    def _sync(self, http: httpx.Client, wait: int) -> None:
        """Reads the feed to its end; the view is fresh as of the start of this read. With
        ``wait``, the first read is a long-poll held until something is revoked."""
        started = time.monotonic()
        while True:
            with self._lock:
                after = self._next
            page = self._get(
                http, f"/v1/revocations?after={after}&wait={wait}", "the revocation feed"
            )
            wait = 0
            try:
                entries = [
                    (str(r["revocation_id"]), _window_end(r.get("expires_at")))
                    for r in page["revocations"]
                ]
                following = int(page["next"])
            except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as err:
                raise LeashError(0, UNREACHABLE, f"bad revocation page: {err!r}") from None
            with self._lock:
                self._revoked.update(entries)
                self._next = following
            if not entries:
                break
        horizon = int(time.time()) - PRUNE_MARGIN
        with self._lock:
            self._revoked = {
                i: end for i, end in self._revoked.items() if end is None or end >= horizon
            }
            if not self._stop.is_set():
                self._last_sync = started

    def _follow(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                last = self._last_key_refresh
            if last is None or time.monotonic() - last >= KEY_REFRESH:
                try:
                    self._refresh_keys(self._feed_http)
                except Exception as err:  # noqa: BLE001 - the follower must outlive any failure
                    _log.warning("cannot refresh the broker's keys: %s", err)
            try:
                self._sync(self._feed_http, self._wait)
                failed = False
            except Exception as err:  # noqa: BLE001 - the follower must outlive any failure
                if self._stop.is_set():
                    return
                _log.warning("revocation feed unreachable; the view is getting stale: %s", err)
                failed = True
            if failed or self._wait == 0:
                self._stop.wait(self._poll_interval)

    def close(self) -> None:
        """Stops following the feed; verification fails closed from then on."""
        self._stop.set()
        with self._lock:
            self._last_sync = None
        self._thread.join(timeout=0.1)
        self._http.close()
        # The follower may still be inside a long-poll: its client closes when it ends.
        if not self._thread.is_alive():
            self._feed_http.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Verifier(url={self._base!r}, max_staleness={self.max_staleness})"


def _window_end(expires_at: Any) -> int | None:
    """The end of a revoked token's window in seconds; unreadable: kept for ever."""
    if not isinstance(expires_at, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp()) + 1
