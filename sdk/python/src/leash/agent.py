"""Agents, blocking: open a task, call tools through the broker, renew, complete, and hand
narrower tokens to sub-agents.

>>> with leash.Broker(url, credential) as broker:                      # doctest: +SKIP
...     with broker.start_task("find notes", ["notes.search"]) as task:
...         hits = task.call("notes.search", {"query": "biscuit"})
...     # the task is completed here: every token of it is refused from now on
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from . import _flows
from ._core import BrokerCore, TaskCore
from ._flows import DEFAULT_APPROVAL_TIMEOUT, ToolInfo
from ._transport import DEFAULT_TIMEOUT, client_options, run

_log = logging.getLogger("leash")


class Broker(BrokerCore):
    """A broker as seen by one agent: its URL and the agent's credential.

    ``approval_timeout`` bounds every wait for a human (issuance, per-call, renewal);
    ``ca_bundle`` adds a PEM file of CA certificates to the platform's roots."""

    def __init__(
        self,
        url: str,
        credential: str,
        *,
        approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT,
        ca_bundle: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(url, credential, approval_timeout)
        self._http = httpx.Client(**client_options(ca_bundle, timeout))

    def start_task(
        self,
        purpose: str,
        tools: Sequence[str],
        ttl_seconds: int | None = None,
        checks: Sequence[str] | None = None,
    ) -> Task:
        """Opens a task for ``tools`` (names or ``prefix.*``). If its grant needs an
        approval, waits (long-polling the task) until an approver decides."""
        flow = _flows.start_task(
            self._credential, purpose, tools, ttl_seconds, checks, self._approval_timeout
        )
        issued = run(flow, self._http, self._base)
        return Task(
            self._http,
            self._base,
            issued.task_id,
            issued.token,
            issued.expires_at,
            self._credential,
            self._approval_timeout,
            self._root_keys,
        )

    def close(self) -> None:
        """Closes the connections (tasks opened by this broker stop working)."""
        self._http.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Task(TaskCore[httpx.Client]):
    """A task: its id, token and window, and what can be done with them. A ``with`` block
    completes the task when it ends, also when it ends with an exception."""

    client_class = httpx.Client

    def call(self, tool: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Calls ``tool`` with an arguments object and returns the upstream's JSON. A tool
        that needs a per-call approval is waited for and the call repeated with it."""
        flow = _flows.call(self._token, tool, arguments or {}, self._approval_timeout)
        return run(flow, self._http, self._base)

    def tools(self) -> list[ToolInfo]:
        """The tools this token may call, with descriptions and input schemas."""
        return run(_flows.tools(self._token), self._http, self._base)

    def renew(self, ttl_seconds: int) -> None:
        """Extends the window (owner only); waits for an approval if the grant needs one.
        The new token replaces the old one."""
        flow = _flows.renew(
            self._owner(), self._task_id, self._token, ttl_seconds, self._approval_timeout
        )
        issued = run(flow, self._http, self._base)
        self._token, self._expires_at = issued.token, issued.expires_at

    def complete(self) -> None:
        """Completes the task: from the answer on, every token of it (attenuated ones
        included) is refused everywhere."""
        bearer = self._credential or self._token
        run(_flows.complete(bearer, self._task_id), self._http, self._base)
        self._completed = True

    def attenuate(self, checks: Sequence[str]) -> str:
        """A narrower token for a sub-agent: this task's token plus one block
        of ``checks`` (``check if call("notes.read")``, ``reject if token_calls($n), $n >=
        5``, …), made locally. It can only do less than this task's token and dies with the
        task. The broker's public keys are fetched once (biscuit-python extends only a
        token it has verified); after that no request is made."""
        made = self._attenuate_offline(checks)
        if made is not None:
            return made
        keys = run(_flows.root_keys(), self._http, self._base)
        return self._attenuate_after_fetch(keys, checks)

    def revoke_token(self, token: str) -> None:
        """Revokes one token derived from this task (a sub-agent's), leaving the task and
        its other tokens alive."""
        run(_flows.revoke_token(self._token, token), self._http, self._base)

    def close(self) -> None:
        """Closes the connections this task opened itself (``from_token``); a task from a
        broker shares the broker's, which the broker closes."""
        if self._owned_http is not None:
            self._owned_http.close()

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if self._complete_on_exit and not self._completed:
                self.complete()
        except Exception:
            if error is None:
                raise  # the task may still be alive: the caller must know
            _log.warning("completing task %s on exit failed", self._task_id, exc_info=True)
        finally:
            self.close()
