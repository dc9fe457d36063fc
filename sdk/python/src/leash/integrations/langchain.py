"""LangChain tools for a Leash task.

An agent built with LangChain (``langchain.agents.create_agent``, LangGraph's ``ToolNode``,
or any code that calls ``BaseTool.invoke``) should call its tools through Leash, so that
every call is checked against the task's capability, audited, held for approval where the
policy asks, and forwarded with the upstream's credential the agent never sees.
:func:`tools` turns the tools a task may call (``GET /v1/tools``: names, descriptions,
input schemas) into LangChain tools whose every call is ``task.call(...)``::

    from leash.integrations.langchain import tools

    with leash.Broker(url, credential) as broker:
        with broker.start_task("find notes", ["notes.search"]) as task:
            agent = create_agent(model, tools(task))
            agent.invoke({"messages": [("user", "what do my notes say about biscuits?")]})

Names. Leash names tools with dots (``notes.search``); LangChain and the model providers
accept only ``^[a-zA-Z0-9_-]{1,64}$``. The model therefore sees ``notes_search`` (every
``.`` becomes ``_``); when two of the task's tools would get the same name that way (say
``notes.search`` and ``notes_search``), or a name would be longer than 64 characters, those
names are cut to 55 characters and get ``_`` and 8 hex digits of the SHA-256 of the Leash
name appended. Each tool keeps its Leash name in :attr:`LeashTool.leash_name`, so
``{t.name: t.leash_name for t in tools(task)}`` maps the model's names back.

Refusals. A call Leash refuses (or cannot make: broker unreachable, approval not given in
time) raises :class:`leash.LeashError` in the SDK. Here it becomes LangChain's tool-error
convention instead of an exception that would end the agent's run: the tool raises
:class:`langchain_core.tools.ToolException` (message: tool, code, status, the broker's
words) and is built with ``handle_tool_error=True``, so ``BaseTool.run``/``arun`` turn it
into the tool's output, a ``ToolMessage`` with ``status="error"`` when the call came from a
model's tool call. The model reads why (``capability_denied: …``) and can change course.

Needs the ``langchain`` extra: ``pip install 'leash-sdk[langchain]'`` (langchain-core).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from .. import LeashError, ToolInfo
from ..agent import Task
from ..aio import AsyncTask
from ._shared import alist, named, refusal_text

try:
    from langchain_core.tools import StructuredTool, ToolException
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "leash.integrations.langchain needs langchain-core: "
        f"pip install 'leash-sdk[langchain]' ({_missing})"
    ) from _missing

__all__ = ["LeashTool", "atools", "tools"]


class LeashTool(StructuredTool):
    """A LangChain tool whose every call goes through a Leash task.

    ``name`` is the model-facing name (``notes_search``), :attr:`leash_name` the tool's
    name in Leash (``notes.search``); ``args_schema`` is the tool's JSON schema as the
    broker lists it (the broker validates every call against it). The arguments reach the
    broker exactly as the model sent them: unlike a plain ``StructuredTool``, no argument
    name is reserved (``StructuredTool`` takes ``config`` and ``run_manager`` for itself
    and would silently drop tool arguments of those names).
    """

    leash_name: str
    """The tool's name in Leash (``notes.search``)."""

    def _run(self, /, *args: Any, **arguments: Any) -> Any:
        # Only the tool's arguments arrive here: BaseTool.run adds `run_manager` or a
        # RunnableConfig only when this signature names them, and it names neither.
        if self.func is None:
            raise NotImplementedError(
                f"{self.name} calls a leash.AsyncTask: use ainvoke (or an async agent run)"
            )
        return self.func(*args, **arguments)

    async def _arun(self, /, *args: Any, **arguments: Any) -> Any:
        if self.coroutine is None:
            return await anyio.to_thread.run_sync(lambda: self._run(*args, **arguments))
        return await self.coroutine(*args, **arguments)


def _tool(task: Task | AsyncTask, info: ToolInfo, model_name: str) -> LeashTool:
    leash_name = info.name
    description = info.description or f"The Leash tool {leash_name}."
    schema = copy.deepcopy(info.input_schema)
    common: dict[str, Any] = {
        "name": model_name,
        "description": description,
        "args_schema": schema,
        "leash_name": leash_name,
        "handle_tool_error": True,
        "metadata": {"leash_tool": leash_name},
    }
    if isinstance(task, AsyncTask):
        async_task = task

        async def call_async(**arguments: Any) -> Any:
            try:
                return await async_task.call(leash_name, arguments)
            except LeashError as err:
                raise ToolException(refusal_text(leash_name, err)) from err

        return LeashTool(coroutine=call_async, **common)

    sync_task = task

    def call(**arguments: Any) -> Any:
        try:
            return sync_task.call(leash_name, arguments)
        except LeashError as err:
            raise ToolException(refusal_text(leash_name, err)) from err

    return LeashTool(func=call, **common)


def tools(task: Task | AsyncTask, listed: Sequence[ToolInfo] | None = None) -> list[LeashTool]:
    """LangChain tools for the tools ``task`` may call, each call going through Leash.

    ``listed`` is the task's tool list (``task.tools()``); for a :class:`leash.Task` it is
    fetched when not given. An :class:`leash.AsyncTask` lists its tools with ``await``, so
    pass ``listed=await task.tools()`` or use :func:`atools`. Tools of a ``Task`` work with
    ``invoke`` and ``ainvoke`` (the blocking call then runs in a worker thread); tools of
    an ``AsyncTask`` only with ``ainvoke``.

    The result is the upstream's JSON as the broker returns it (LangChain serialises it
    to JSON for the ``ToolMessage``); a refusal is a ``ToolException`` handled by LangChain
    as the tool's error output (see the module's docstring).
    """
    return [_tool(task, info, name) for info, name in named(task, listed)]


async def atools(task: Task | AsyncTask) -> list[LeashTool]:
    """:func:`tools` for async code: lists the task's tools without blocking the loop."""
    return tools(task, await alist(task))
