"""The agent protocol without I/O: each operation (open a task, call a tool, renew, …) is
a generator that yields the HTTP requests and pauses it needs and receives the answers.
:mod:`leash.agent` runs these flows with a blocking client and :mod:`leash.aio` with an
async one, so the protocol (paths, bodies, approval waits, error mapping) exists once."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import capability
from .errors import BAD_ANSWER, BAD_TOKEN, ApprovalTimeout, LeashError, TaskNotActivated

#: Header that repeats a call an approver allowed (single use, bound to tool and arguments).
APPROVAL_HEADER = "Leash-Approval"
#: Header carrying the per-call capability Leash forwards to tool servers.
CAPABILITY_HEADER = "Leash-Capability"
#: How long an approval is waited for by default, in seconds.
DEFAULT_APPROVAL_TIMEOUT = 300.0
#: Pause between repeats of a held call while its approval is pending, in seconds.
CALL_APPROVAL_POLL = 0.25
#: Longest single long-poll of a pending task, in seconds.
LONG_POLL = 60

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """One HTTP request to the broker."""

    method: str
    path: str
    bearer: str = field(repr=False)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Seconds to wait for the answer (long-polls need more than the default).
    timeout: float | None = None


@dataclass(frozen=True)
class Answer:
    """The broker's answer to a :class:`Request`."""

    status: int
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Pause:
    """Sleep this many seconds before the next step."""

    seconds: float


Flow = Generator["Request | Pause", "Answer | None", T]


@dataclass(frozen=True)
class ToolInfo:
    """A tool a task token may call (``GET /v1/tools``)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    #: ``"none"`` or ``"per_call"`` (calls wait for an approver).
    approval: str = "none"


@dataclass(frozen=True)
class Issued:
    """An active task's id, token and window end."""

    task_id: str
    token: str = field(repr=False)
    expires_at: str | None


def read(answer: Answer, *ok: int) -> Any:
    """The JSON body of a successful answer; a :class:`LeashError` with the broker's code
    otherwise."""
    try:
        body = json.loads(answer.body) if answer.body else None
    except (ValueError, RecursionError):
        body = None
    if answer.status in ok or (not ok and 200 <= answer.status < 300):
        if body is None:
            raise LeashError(answer.status, BAD_ANSWER, "the broker's answer is not JSON")
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        listed = error.get("violations")
        violations = [
            {str(k): str(v) for k, v in item.items()}
            for item in (listed if isinstance(listed, list) else [])
            if isinstance(item, dict)
        ]
        raise LeashError(answer.status, error["code"], str(error.get("message", "")), violations)
    raise LeashError(answer.status, BAD_ANSWER, f"HTTP {answer.status} without an error body")


def ask(request: Request) -> Flow[Answer]:
    """One request, one answer (the drivers send an answer for every request)."""
    answer = yield request
    if answer is None:
        raise LeashError(0, BAD_ANSWER, "no answer to a request")
    return answer


def _field(body: Any, name: str) -> Any:
    if not isinstance(body, dict) or name not in body:
        raise LeashError(0, BAD_ANSWER, f"the broker's answer has no {name!r}")
    return body[name]


def start_task(
    credential: str,
    purpose: str,
    tools: Sequence[str],
    ttl_seconds: int | None,
    checks: Sequence[str] | None,
    approval_timeout: float,
) -> Flow[Issued]:
    """``POST /v1/tasks``; a pending task is long-polled until an approver decides."""
    if isinstance(tools, str):
        raise TypeError("tools must be a list of tool names, not one string")
    body: dict[str, Any] = {"purpose": purpose, "tools": list(tools)}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    if checks:
        body["checks"] = list(checks)
    issued = read((yield from ask(Request("POST", "/v1/tasks", credential, body))), 201, 202)
    task_id = str(_field(issued, "task_id"))
    task_path(task_id)
    state = _field(issued, "state")
    if state == "active":
        return Issued(task_id, str(_field(issued, "token")), issued.get("expires_at"))
    if state != "pending_approval":
        raise TaskNotActivated(task_id, str(state))
    approval_id = str(issued.get("approval_id", ""))
    deadline = time.monotonic() + approval_timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ApprovalTimeout(approval_id)
        wait = int(min(max(left, 1), LONG_POLL))
        path = f"{task_path(task_id)}?wait={wait}"
        view = read((yield from ask(Request("GET", path, credential, timeout=wait + 10.0))))
        state = _field(view, "state")
        if state == "active":
            return Issued(task_id, str(_field(view, "token")), view.get("expires_at"))
        if state != "pending_approval":
            raise TaskNotActivated(task_id, str(state))


def task_path(task_id: str) -> str:
    """``/v1/tasks/{id}``; an id that is not one (say ``..``, which would leave its path
    segment) is refused before any request carries a credential."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise LeashError(0, BAD_ANSWER, f"{task_id!r} is not a task id")
    return f"/v1/tasks/{task_id}"


def check_tool_name(tool: str) -> str:
    """The name goes into the URL path: anything but a tool name (say a model-chosen
    ``../tasks/…/complete``) is refused before a request is made."""
    if not isinstance(tool, str) or len(tool) > 128 or not _TOOL_NAME.fullmatch(tool):
        raise LeashError(400, "bad_request", f"{tool!r} is not a tool name")
    return tool


def call(token: str, tool: str, arguments: Mapping[str, Any], approval_timeout: float) -> Flow[Any]:
    """``POST /v1/tools/{tool}/call``; a held call is repeated with ``Leash-Approval``
    until the approver decides (or the timeout passes). Returns the upstream's JSON."""
    path = f"/v1/tools/{check_tool_name(tool)}/call"
    body = dict(arguments)
    headers: dict[str, str] = {}
    deadline = time.monotonic() + approval_timeout
    while True:
        answer = yield from ask(Request("POST", path, token, body, headers))
        if answer.status != 202:
            return _field(read(answer), "result")
        approval_id = str(_field(read(answer, 202), "approval_id"))
        if time.monotonic() >= deadline:
            raise ApprovalTimeout(approval_id)
        headers = {APPROVAL_HEADER: approval_id}
        yield Pause(CALL_APPROVAL_POLL)


def tools(token: str) -> Flow[list[ToolInfo]]:
    """``GET /v1/tools``: what this token may call."""
    listed = _field(read((yield from ask(Request("GET", "/v1/tools", token)))), "tools")
    if not isinstance(listed, list):
        raise LeashError(0, BAD_ANSWER, "tools is not a list")
    infos = []
    for t in listed:
        schema = t.get("input_schema") if isinstance(t, dict) else None
        if not isinstance(schema, dict):
            raise LeashError(0, BAD_ANSWER, "a listed tool has no input schema object")
        infos.append(
            ToolInfo(
                name=str(_field(t, "name")),
                description=str(t.get("description", "")),
                input_schema=schema,
                approval=str(t.get("approval", "none")),
            )
        )
    return infos


def renew(
    credential: str, task_id: str, token: str, ttl_seconds: int, approval_timeout: float
) -> Flow[Issued]:
    """``POST /v1/tasks/{id}/renew``; a renewal that needs approval is waited for until
    the task shows a new token."""
    base = task_path(task_id)
    answer = yield from ask(
        Request("POST", f"{base}/renew", credential, {"ttl_seconds": ttl_seconds})
    )
    issued = read(answer, 200, 202)
    if answer.status == 200:
        return Issued(task_id, str(_field(issued, "token")), issued.get("expires_at"))
    approval_id = str(issued.get("approval_id", ""))
    deadline = time.monotonic() + approval_timeout
    while time.monotonic() < deadline:
        view = read((yield from ask(Request("GET", base, credential))))
        state = _field(view, "state")
        if state != "active":
            raise TaskNotActivated(task_id, str(state))
        new = view.get("token")
        if isinstance(new, str) and new != token:
            return Issued(task_id, new, view.get("expires_at"))
        yield Pause(0.5)
    raise ApprovalTimeout(approval_id)


def complete(bearer: str, task_id: str) -> Flow[None]:
    """``POST /v1/tasks/{id}/complete``: every token of the task dies."""
    path = f"{task_path(task_id)}/complete"
    read((yield from ask(Request("POST", path, bearer))))
    return None


def revoke_token(bearer: str, token: str) -> Flow[None]:
    """``POST /v1/tokens/revoke``: one (attenuated) token dies, the task lives on."""
    read((yield from ask(Request("POST", "/v1/tokens/revoke", bearer, {"token": token}))))
    return None


def root_keys() -> Flow[dict[int, Any]]:
    """``GET /.well-known/leash/keys``: the root public keys by key id (public, no bearer)."""
    document = read((yield from ask(Request("GET", "/.well-known/leash/keys", ""))))
    try:
        return capability.public_keys(document)
    except ValueError as err:
        raise LeashError(0, BAD_ANSWER, str(err)) from None


def bad_token(message: str) -> LeashError:
    """A token the SDK cannot use (not a Biscuit, names no task, …)."""
    return LeashError(0, BAD_TOKEN, message)
