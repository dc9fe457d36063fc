"""A LangChain agent whose tools are a Leash task's tools.

``langchain.agents.create_agent`` runs its real agent loop (model → tool calls → tool
messages → model) with tools from :func:`leash.integrations.langchain.tools`: every call the
model asks for goes through Leash, which checks it against the task's capability and
forwards it to the tool server. No LLM account is needed: the chat model is scripted (it
asks for ``notes_search`` with ``{"query": "biscuit"}``, then answers), so the example
shows the plumbing, not a model's judgement.

Run (broker and ``examples/tool_server.py`` running, an agent allowed ``notes.search``)::

    LEASH_URL=http://127.0.0.1:7070 LEASH_CREDENTIAL=... python examples/langchain_agent.py
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

import leash
from leash.integrations import langchain as leash_langchain

QUESTION = "What do my notes say about biscuits?"


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that plays a script (``messages``, see :func:`script`) until the
    agent loop hands it a tool's result, then answers with that result (``"The notes tool
    answered: …"``). It records what the loop gave it: the tools it was bound to (as a
    provider would see them) and the messages of every turn (``seen``)."""

    bound_tools: list[dict[str, Any]] = Field(default_factory=list)
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        self.bound_tools = [convert_to_openai_tool(tool) for tool in tools]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        results = [message for message in messages if isinstance(message, ToolMessage)]
        if not results:
            return super()._generate(messages, *args, **kwargs)
        answer = AIMessage(content=f"The notes tool answered: {results[-1].content}")
        return ChatResult(generations=[ChatGeneration(message=answer)])


def script() -> Iterator[AIMessage]:
    """The model's first turn: call ``notes_search`` for "biscuit"."""
    call = ToolCall(name="notes_search", args={"query": "biscuit"}, id="call-1", type="tool_call")
    yield AIMessage(content="", tool_calls=[call])


def run_agent(
    tools: Sequence[BaseTool], model: ScriptedChatModel | None = None
) -> list[BaseMessage]:
    """Runs the agent loop with ``tools`` (say ``leash_langchain.tools(task)``); returns the
    run's messages."""
    if model is None:
        model = ScriptedChatModel(messages=script())
    agent = create_agent(model, list(tools))
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    messages: list[BaseMessage] = state["messages"]
    return messages


async def arun_agent(
    tools: Sequence[BaseTool], model: ScriptedChatModel | None = None
) -> list[BaseMessage]:
    """The same agent loop, run with ``ainvoke`` (for the tools of an
    :class:`leash.AsyncTask`: ``await leash_langchain.atools(task)``)."""
    if model is None:
        model = ScriptedChatModel(messages=script())
    agent = create_agent(model, list(tools))
    state = await agent.ainvoke({"messages": [HumanMessage(QUESTION)]})
    messages: list[BaseMessage] = state["messages"]
    return messages


def run(url: str, credential: str) -> list[BaseMessage]:
    """Opens a task for ``notes.search``, runs the agent, completes the task (the ``with``
    block); returns the run's messages."""
    with (
        leash.Broker(url, credential) as broker,
        broker.start_task("answer a question from the notes", ["notes.search"]) as task,
    ):
        return run_agent(leash_langchain.tools(task))


def main() -> None:
    url = os.environ.get("LEASH_URL", "http://127.0.0.1:7070")
    credential = os.environ["LEASH_CREDENTIAL"]
    for message in run(url, credential):
        message.pretty_print()


if __name__ == "__main__":
    main()
