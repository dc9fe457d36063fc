"""What both framework integrations share: listing a task's tools, the model-facing tool
names, and the text a model reads when Leash refuses a call.

Leash names tools with dots (``notes.search``); LangChain, the Agents SDK and the model
providers accept only ``^[a-zA-Z0-9_-]{1,64}$``. Every ``.`` becomes ``_``; when two tools
would get the same name that way, or a name would be longer than 64 characters, those
names are cut to 55 characters and get ``_`` plus 8 hex digits of the SHA-256 of the Leash
name."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import anyio.to_thread

from .._flows import ToolInfo
from ..agent import Task
from ..aio import AsyncTask
from ..errors import LeashError

#: Longest tool name the model providers accept.
MAX_NAME = 64


def model_names(names: Sequence[str]) -> list[str]:
    """The model-facing name of each Leash tool name."""
    plain = [name.replace(".", "_") for name in names]
    made = []
    for name, simple in zip(names, plain, strict=True):
        if len(simple) > MAX_NAME or plain.count(simple) > 1:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            simple = f"{simple[: MAX_NAME - 9]}_{digest}"
        made.append(simple)
    if len(set(made)) != len(made):
        raise ValueError(f"these tool names cannot be told apart by a model: {list(names)}")
    return made


def refusal_text(leash_name: str, err: LeashError) -> str:
    """Why Leash did not run a call, for the model: code, status, the broker's words and,
    for ``invalid_arguments``, each violation with its JSON pointer."""
    text = f"Leash did not run {leash_name}: {err.code} (status {err.status}): {err.message}"
    for violation in err.violations:
        text += f"\n- {violation.get('pointer') or '/'}: {violation.get('message', '')}"
    return text


def named(task: Task | AsyncTask, listed: Sequence[ToolInfo] | None) -> list[tuple[ToolInfo, str]]:
    """Each listed tool with its model-facing name; a ``Task``'s tools are listed when not
    given (an ``AsyncTask`` must list them with ``await``: see :func:`alist`)."""
    if listed is None:
        if isinstance(task, AsyncTask):
            raise TypeError(
                "an AsyncTask lists its tools with await: use `await atools(task)` "
                "or pass listed=await task.tools()"
            )
        listed = task.tools()
    return list(zip(listed, model_names([info.name for info in listed]), strict=True))


async def alist(task: Task | AsyncTask) -> list[ToolInfo]:
    """The task's tools, listed without blocking the event loop."""
    if isinstance(task, AsyncTask):
        return await task.tools()
    return await anyio.to_thread.run_sync(task.tools)
