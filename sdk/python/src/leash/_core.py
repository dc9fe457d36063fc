"""What :class:`leash.Task` and :class:`leash.AsyncTask` (and the two brokers) share:
their fields, the offline operations, and a ``repr`` that never shows a secret."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from . import capability
from ._flows import DEFAULT_APPROVAL_TIMEOUT, bad_token, task_path
from ._transport import DEFAULT_TIMEOUT, client_options

#: The HTTP client type: ``httpx.Client`` or ``httpx.AsyncClient``.
C = TypeVar("C")
T = TypeVar("T", bound="TaskCore[Any]")


class BrokerCore:
    """A broker's URL and one agent's credential."""

    def __init__(self, url: str, credential: str, approval_timeout: float) -> None:
        if not credential or not credential.strip():
            raise ValueError("an agent credential is required")
        self._base = url.rstrip("/")
        self._credential = credential.strip()
        self._approval_timeout = approval_timeout
        #: The broker's root keys, fetched once and shared with this broker's tasks (an
        #: attenuation needs them: biscuit-python extends only tokens it verified).
        self._root_keys: dict[int, Any] = {}

    @property
    def url(self) -> str:
        """The broker's base URL."""
        return self._base

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._base!r}, credential=<redacted>)"


class TaskCore(Generic[C]):
    """A task's id, token and window, its HTTP client, and what needs no broker."""

    #: Makes this kind of task's HTTP client (``httpx.Client`` or ``httpx.AsyncClient``).
    client_class: Any

    def __init__(
        self,
        http: C,
        base: str,
        task_id: str,
        token: str,
        expires_at: str | None,
        credential: str | None,
        approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT,
        root_keys: dict[int, Any] | None = None,
    ) -> None:
        self._http = http
        #: The client this task opened itself (``from_token``), closed with the task.
        self._owned_http: C | None = None
        self._base = base
        self._root_keys = root_keys if root_keys is not None else {}
        self._task_id = task_id
        self._token = token
        self._expires_at = expires_at
        #: The owner's credential when this process opened the task (renewal needs it).
        self._credential = credential
        self._approval_timeout = approval_timeout
        self._completed = False
        #: Whether a ``with`` block ends the task: yes for a task this process opened;
        #: a task taken over with ``from_token`` only when asked (``owns_task=True``),
        #: so a sub-agent leaving its block does not end its parent's task.
        self._complete_on_exit = credential is not None

    @classmethod
    def from_token(
        cls: type[T],
        url: str,
        token: str,
        *,
        approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT,
        ca_bundle: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        owns_task: bool = False,
    ) -> T:
        """A task from a token handed over by another agent (a sub-agent's side of
        delegation). The broker checks the token on every call. Its ``with`` block closes
        its connections; it also completes the task only with ``owns_task=True`` (a
        sub-agent finishing its part must not end the parent's task)."""
        token = token.strip()
        try:
            task_id = capability.task_id_of(token)
        except ValueError as err:
            raise bad_token(str(err)) from None
        task_path(task_id)
        http = cls.client_class(**client_options(ca_bundle, timeout))
        task = cls(http, url.rstrip("/"), task_id, token, None, None, approval_timeout)
        task._owned_http = http
        task._complete_on_exit = owns_task
        return task

    @property
    def id(self) -> str:
        """The task id."""
        return self._task_id

    @property
    def token(self) -> str:
        """The task token: send it only to the broker, or attenuate it for a sub-agent."""
        return self._token

    @property
    def expires_at(self) -> str | None:
        """End of the window (RFC 3339), when known."""
        return self._expires_at

    def _attenuate_offline(self, checks: Sequence[str]) -> str | None:
        """The attenuated token, or ``None`` when the broker's keys must be fetched first."""
        try:
            return capability.attenuate(self._token, checks, self._root_keys)
        except capability.UnknownKey:
            return None
        except ValueError as err:
            raise bad_token(str(err)) from None

    def _attenuate_after_fetch(self, keys: dict[int, Any], checks: Sequence[str]) -> str:
        self._root_keys.update(keys)
        try:
            return capability.attenuate(self._token, checks, self._root_keys)
        except ValueError as err:
            raise bad_token(str(err)) from None

    def _owner(self) -> str:
        if self._credential is None:
            raise bad_token("only the owner agent can renew (this task came from a token)")
        return self._credential

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self._base!r}, id={self._task_id!r}, "
            f"token=<redacted>, expires_at={self._expires_at!r})"
        )
