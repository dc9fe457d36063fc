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
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolCall
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

import leash
from leash.integrations import langchain as leash_langchain

QUESTION = "What do my notes say about biscuits?"
ANSWER = "Your notes say Biscuit tokens can be attenuated offline."


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that plays a script and records what the agent loop gave it: the
    tools it was bound to (as a provider would see them) and the messages of every turn."""

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
        return super()._generate(messages, *args, **kwargs)


def script() -> Iterator[AIMessage]:
    """Turn one: call ``notes_search``; turn two: answer."""
    call = ToolCall(name="notes_search", args={"query": "biscuit"}, id="call-1", type="tool_call")
    yield AIMessage(content="", tool_calls=[call])
    yield AIMessage(content=ANSWER)


def run_agent(
    tools: Sequence[BaseTool], model: ScriptedChatModel | None = None
) -> list[BaseMessage]:
    """Runs the agent loop with ``tools`` (say ``leash_langchain.tools(task)``); returns the
    run's messages."""
    model = model or ScriptedChatModel(messages=script())
    agent = create_agent(model, list(tools))
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    messages: list[BaseMessage] = state["messages"]
    return messages


async def arun_agent(
    tools: Sequence[BaseTool], model: ScriptedChatModel | None = None
) -> list[BaseMessage]:
    """The same agent loop, run with ``ainvoke`` (for the tools of an
    :class:`leash.AsyncTask`: ``await leash_langchain.atools(task)``)."""
    model = model or ScriptedChatModel(messages=script())
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
