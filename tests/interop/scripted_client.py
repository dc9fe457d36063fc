"""What the interop MCP clients answer when an upstream asks them, and what they record:
a scripted model's reply to sampling, a name to elicitation, one root to roots/list.
Shared by mcp_relay.py and mcp_rounds.py (a script's own folder is on its import path)."""
from typing import Any

from mcp import types

seen: dict[str, list[Any]] = {
    "sampled": [],
    "elicited": [],
    "roots_asked": [],
    "progress": [],
    "logs": [],
    "changed": [],
}


def describe(err: BaseException) -> str:
    """The leaf errors of an exception (group), as text."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in err.exceptions)
    return "%s: %s" % (type(err).__name__, err)


async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    seen["sampled"].append([getattr(m.content, "text", "") for m in params.messages])
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="forty-two"), model="scripted"
    )


async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    seen["elicited"].append(params.message)
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def list_roots(context: Any) -> types.ListRootsResult:
    seen["roots_asked"].append(True)
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)
