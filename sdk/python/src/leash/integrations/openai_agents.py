"""OpenAI Agents SDK tools for a Leash task.

An agent built with the OpenAI Agents SDK (``agents.Agent`` run by ``agents.Runner``)
should call its tools through Leash, so that every call is checked against the task's
capability, audited, held for approval where the policy asks, and forwarded with the
upstream's credential the agent never sees. :func:`tools` turns the tools a task may call
(``GET /v1/tools``: names, descriptions, input schemas) into ``agents.FunctionTool`` objects
whose every invocation is ``task.call(...)``::

    from leash.integrations.openai_agents import atools

    async with leash.AsyncBroker(url, credential) as broker:
        async with await broker.start_task("find notes", ["notes.search"]) as task:
            agent = Agent(name="notes", tools=await atools(task))
            await Runner.run(agent, "what do my notes say about biscuits?")

Names. Leash names tools with dots (``notes.search``); the model providers accept only
``^[a-zA-Z0-9_-]{1,64}$``. The model therefore sees ``notes_search`` (every ``.`` becomes
``_``); when two of the task's tools would get the same name that way, or a name would be
longer than 64 characters, those names are cut to 55 characters and get ``_`` and 8 hex
digits of the SHA-256 of the Leash name appended. Each tool keeps its Leash name in
:attr:`LeashFunctionTool.leash_name`, so ``{t.name: t.leash_name for t in tools(task)}``
maps the model's names back.

Refusals. A call Leash refuses (or cannot make: broker unreachable, approval not given in
time) raises :class:`leash.LeashError` in the SDK. The Agents SDK's convention for a
``FunctionTool`` is that ``on_invoke_tool`` either returns a string the model reads or
raises, and a raised exception fails the whole run (``UserError("Error running tool
…")``). So the invoker returns the refusal as text (tool, code, status, the broker's
words: ``capability_denied: …``) and the run goes on with the model deciding what next.
Arguments that are not a JSON object are answered the same way. Successful results are
the upstream's JSON, serialised as JSON text (the Agents SDK would otherwise ``str()`` a
dict, or read a dict with a ``type`` key as a structured output item).

Needs the ``openai-agents`` extra: ``pip install 'leash-sdk[openai-agents]'``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from .. import LeashError, ToolInfo
from ..agent import Task
from ..aio import AsyncTask
from ._shared import alist, named, refusal_text

try:
    from agents import FunctionTool
    from agents.tool_context import ToolContext
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "leash.integrations.openai_agents needs the OpenAI Agents SDK: "
        f"pip install 'leash-sdk[openai-agents]' ({_missing})"
    ) from _missing

__all__ = ["LeashFunctionTool", "atools", "tools"]


@dataclass
class LeashFunctionTool(FunctionTool):
    """An ``agents.FunctionTool`` whose every invocation goes through a Leash task.

    ``name`` is the model-facing name (``notes_search``), :attr:`leash_name` the tool's
    name in Leash (``notes.search``); ``params_json_schema`` is the tool's JSON schema as
    the broker lists it."""

    leash_name: str = field(default="", kw_only=True)
    """The tool's name in Leash (``notes.search``)."""


def _tool(task: Task | AsyncTask, info: ToolInfo, model_name: str) -> LeashFunctionTool:
    leash_name = info.name

    async def call(arguments: dict[str, Any]) -> Any:
        if isinstance(task, AsyncTask):
            return await task.call(leash_name, arguments)
        sync_task = task
        # The blocking call runs in a worker thread: the event loop (other tools, other
        # runs) goes on while Leash waits for the upstream or for an approver.
        return await anyio.to_thread.run_sync(lambda: sync_task.call(leash_name, arguments))

    async def on_invoke_tool(ctx: ToolContext[Any], args_json: str) -> str:
        try:
            arguments = json.loads(args_json) if args_json.strip() else {}
        except (ValueError, RecursionError):
            arguments = None
        if not isinstance(arguments, dict):
            return f"{leash_name} takes a JSON object of arguments; got {args_json[:200]!r}"
        try:
            result = await call(arguments)
        except LeashError as err:
            return refusal_text(leash_name, err)
        return json.dumps(result, ensure_ascii=False)

    return LeashFunctionTool(
        name=model_name,
        description=info.description or f"The Leash tool {leash_name}.",
        params_json_schema=copy.deepcopy(info.input_schema),
        on_invoke_tool=on_invoke_tool,
        # Not strict: strict mode (agents.strict_schema.ensure_strict_json_schema) rewrites
        # a schema into the subset OpenAI's structured outputs accept, which changes what
        # Leash's schemas mean: every property becomes required (an optional argument the
        # model must now invent) and an open object (`{"type": "object"}`) is closed to
        # accept no argument at all. Policy authors write ordinary JSON Schema, and the
        # broker validates every call against it; a violation comes back to the model as
        # an `invalid_arguments` refusal it can correct.
        strict_json_schema=False,
        leash_name=leash_name,
    )


def tools(
    task: Task | AsyncTask, listed: Sequence[ToolInfo] | None = None
) -> list[LeashFunctionTool]:
    """Agents SDK function tools for the tools ``task`` may call, each call going through
    Leash.

    ``listed`` is the task's tool list (``task.tools()``); for a :class:`leash.Task` it is
    fetched when not given. An :class:`leash.AsyncTask` lists its tools with ``await``, so
    pass ``listed=await task.tools()`` or use :func:`atools`. A ``Task``'s blocking calls
    run in a worker thread; an ``AsyncTask``'s on the run's event loop.

    Each tool returns the upstream's JSON as text, or a refusal as text the model reads
    (see the module's docstring); it never raises a :class:`leash.LeashError` into the run.
    """
    return [_tool(task, info, name) for info, name in named(task, listed)]


async def atools(task: Task | AsyncTask) -> list[LeashFunctionTool]:
    """:func:`tools` for async code: lists the task's tools without blocking the loop."""
    return tools(task, await alist(task))
