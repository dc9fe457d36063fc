"""Agents, async: :class:`AsyncBroker` and :class:`AsyncTask` mirror :class:`leash.Broker`
and :class:`leash.Task` with ``await`` and ``async with``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from . import _flows
from ._core import BrokerCore, TaskCore
from ._flows import DEFAULT_APPROVAL_TIMEOUT, ToolInfo
from ._transport import DEFAULT_TIMEOUT, client_options, run_async

_log = logging.getLogger("leash")


class AsyncBroker(BrokerCore):
    """A broker as seen by one agent, for asyncio (see :class:`leash.Broker`)."""

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
        self._http = httpx.AsyncClient(**client_options(ca_bundle, timeout))

    async def start_task(
        self,
        purpose: str,
        tools: Sequence[str],
        ttl_seconds: int | None = None,
        checks: Sequence[str] | None = None,
    ) -> AsyncTask:
        """Opens a task; waits for an approver if its grant needs one."""
        flow = _flows.start_task(
            self._credential, purpose, tools, ttl_seconds, checks, self._approval_timeout
        )
        issued = await run_async(flow, self._http, self._base)
        return AsyncTask(
            self._http,
            self._base,
            issued.task_id,
            issued.token,
            issued.expires_at,
            self._credential,
            self._approval_timeout,
            self._root_keys,
        )

    async def aclose(self) -> None:
        """Closes the connections (tasks opened by this broker stop working)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncTask(TaskCore[httpx.AsyncClient]):
    """A task, for asyncio; ``async with`` completes it when the block ends."""

    client_class = httpx.AsyncClient

    async def call(self, tool: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Calls ``tool``; per-call approvals are waited for (see :meth:`leash.Task.call`)."""
        flow = _flows.call(self._token, tool, arguments or {}, self._approval_timeout)
        return await run_async(flow, self._http, self._base)

    async def tools(self) -> list[ToolInfo]:
        """The tools this token may call."""
        return await run_async(_flows.tools(self._token), self._http, self._base)

    async def renew(self, ttl_seconds: int) -> None:
        """Extends the window (owner only); the new token replaces the old one."""
        flow = _flows.renew(
            self._owner(), self._task_id, self._token, ttl_seconds, self._approval_timeout
        )
        issued = await run_async(flow, self._http, self._base)
        self._token, self._expires_at = issued.token, issued.expires_at

    async def complete(self) -> None:
        """Completes the task: every token of it is refused from the answer on."""
        bearer = self._credential or self._token
        await run_async(_flows.complete(bearer, self._task_id), self._http, self._base)
        self._completed = True

    async def attenuate(self, checks: Sequence[str]) -> str:
        """A narrower token for a sub-agent, made locally (see
        :meth:`leash.Task.attenuate`)."""
        made = self._attenuate_offline(checks)
        if made is not None:
            return made
        keys = await run_async(_flows.root_keys(), self._http, self._base)
        return self._attenuate_after_fetch(keys, checks)

    async def revoke_token(self, token: str) -> None:
        """Revokes one token derived from this task."""
        await run_async(_flows.revoke_token(self._token, token), self._http, self._base)

    async def aclose(self) -> None:
        """Closes the connections this task opened itself (``from_token``); a task from a
        broker shares the broker's, which the broker closes."""
        if self._owned_http is not None:
            await self._owned_http.aclose()

    async def __aenter__(self) -> AsyncTask:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if self._complete_on_exit and not self._completed:
                await self.complete()
        except Exception:
            if error is None:
                raise
            _log.warning("completing task %s on exit failed", self._task_id, exc_info=True)
        finally:
            await self.aclose()
