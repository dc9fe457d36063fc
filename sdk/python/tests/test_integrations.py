"""The framework integrations against the real broker and the example tool server.

Each framework's own agent loop (LangChain's ``create_agent``, the Agents SDK's ``Runner``)
runs with a scripted model: the framework decides to call the tool, the call goes through
Leash to the tool server, and the framework feeds Leash's answer back to the model. A
refusal must come back as that framework's tool error, and the run must go on."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import langchain_agent
import openai_agents_agent
import pytest
from conftest import BrokerProcess
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from tool_server import NOTES

import leash
from leash.integrations import langchain as lc
from leash.integrations import openai_agents as oa

AGENT = "framework-bot"
NOTE = NOTES["/notes/biscuit"]
#: The model-facing tool name providers accept.
VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: What conftest.policy gives notes.search and notes.read.
SEARCH_SCHEMA = {
    "type": "object",
    "required": ["query"],
    "additionalProperties": False,
    "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 200}},
}
READ_SCHEMA = {
    "type": "object",
    "required": ["path"],
    "additionalProperties": False,
    "properties": {"path": {"type": "string"}},
}
ONLY_READ = ['check if call("notes.read")']


def admitted(broker: BrokerProcess, task_id: str) -> list[dict[str, Any]]:
    """The calls the tool server admitted for one task."""
    return [call for call in broker.upstream_calls() if call["task_id"] == task_id]


def tool_messages(messages: list[BaseMessage]) -> list[ToolMessage]:
    return [message for message in messages if isinstance(message, ToolMessage)]


# --- LangChain -------------------------------------------------------------------------


def assert_langchain_success(
    messages: list[BaseMessage], model: langchain_agent.ScriptedChatModel
) -> None:
    """The loop called notes_search once, got the note, and the model saw it."""
    [result] = tool_messages(messages)
    assert result.name == "notes_search"
    assert result.status == "success"
    assert NOTE in str(result.content)
    # The framework fed Leash's answer back to the model on its second turn.
    assert len(model.seen) == 2
    fed_back = tool_messages(model.seen[1])
    assert [m.tool_call_id for m in fed_back] == ["call-1"]
    assert NOTE in str(fed_back[0].content)
    assert isinstance(messages[-1], AIMessage)
    assert NOTE in str(messages[-1].content)


def assert_langchain_refusal(
    messages: list[BaseMessage], model: langchain_agent.ScriptedChatModel
) -> None:
    """The refusal became a ToolMessage with status "error" and the run went on."""
    [result] = tool_messages(messages)
    assert result.name == "notes_search"
    assert result.status == "error"
    assert "capability_denied" in str(result.content)
    assert len(model.seen) == 2
    [fed_back] = tool_messages(model.seen[1])
    assert fed_back.status == "error"
    assert "capability_denied" in str(fed_back.content)
    assert isinstance(messages[-1], AIMessage)
    assert "capability_denied" in str(messages[-1].content)


def test_langchain_agent_calls_through_leash(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("langchain agent", ["notes.search", "notes.read"]) as task,
    ):
        model = langchain_agent.ScriptedChatModel(messages=langchain_agent.script())
        messages = langchain_agent.run_agent(lc.tools(task), model)
        assert_langchain_success(messages, model)
        calls = admitted(broker, task.id)
        assert calls == [{"tool": "notes.search", "task_id": task.id, "agent": AGENT}]


def test_langchain_example_run(broker: BrokerProcess) -> None:
    before = len(broker.upstream_calls())
    messages = langchain_agent.run(broker.url, broker.credential(AGENT))
    [result] = tool_messages(messages)
    assert result.status == "success"
    assert NOTE in str(result.content)
    new = broker.upstream_calls()[before:]
    assert [(call["tool"], call["agent"]) for call in new] == [("notes.search", AGENT)]


def test_langchain_refusal_is_a_tool_error(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("langchain refusal", ["notes.search", "notes.read"]) as task,
    ):
        sub = leash.Task.from_token(broker.url, task.attenuate(ONLY_READ))
        # The sub-agent was handed the parent's tool definitions (its own listing would
        # not show notes.search at all): Leash, not the listing, must stop the call.
        model = langchain_agent.ScriptedChatModel(messages=langchain_agent.script())
        messages = langchain_agent.run_agent(lc.tools(sub, listed=task.tools()), model)
        assert_langchain_refusal(messages, model)
        assert admitted(broker, task.id) == []


async def test_langchain_async_task(broker: BrokerProcess) -> None:
    async with leash.AsyncBroker(broker.url, broker.credential(AGENT)) as client:
        task = await client.start_task("langchain async", ["notes.search", "notes.read"])
        async with task:
            model = langchain_agent.ScriptedChatModel(messages=langchain_agent.script())
            messages = await langchain_agent.arun_agent(await lc.atools(task), model)
            assert_langchain_success(messages, model)
            calls = admitted(broker, task.id)
            assert calls == [{"tool": "notes.search", "task_id": task.id, "agent": AGENT}]

            sub = leash.AsyncTask.from_token(broker.url, await task.attenuate(ONLY_READ))
            model = langchain_agent.ScriptedChatModel(messages=langchain_agent.script())
            listed = await task.tools()
            messages = await langchain_agent.arun_agent(lc.tools(sub, listed=listed), model)
            assert_langchain_refusal(messages, model)
            assert len(admitted(broker, task.id)) == 1

            # An AsyncTask lists its tools with await, and its tools run only async.
            with pytest.raises(TypeError, match="atools"):
                lc.tools(task)
            [search] = [tool for tool in await lc.atools(task) if tool.name == "notes_search"]
            with pytest.raises(NotImplementedError, match="ainvoke"):
                search.invoke({"query": "biscuit"})
            assert len(admitted(broker, task.id)) == 1


async def test_langchain_sync_task_in_an_async_run(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("langchain sync task, async run", ["notes.search"]) as task,
    ):
        model = langchain_agent.ScriptedChatModel(messages=langchain_agent.script())
        messages = await langchain_agent.arun_agent(await lc.atools(task), model)
        assert_langchain_success(messages, model)
        assert len(admitted(broker, task.id)) == 1


def test_langchain_tool_list(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("langchain tools", ["notes.search", "notes.read"]) as task,
    ):
        made = {tool.name: tool for tool in lc.tools(task)}
        assert sorted(made) == ["notes_read", "notes_search"]
        search, read = made["notes_search"], made["notes_read"]
        assert (search.leash_name, read.leash_name) == ("notes.search", "notes.read")
        assert search.description == "Search the notes"
        assert read.description == "Read one note by path"
        assert search.args_schema == SEARCH_SCHEMA
        assert read.args_schema == READ_SCHEMA
        assert search.handle_tool_error is True
        # What a provider is sent: the bound tools of the scripted model.
        model = langchain_agent.ScriptedChatModel(messages=langchain_agent.script())
        langchain_agent.run_agent(list(made.values()), model)
        functions = {tool["function"]["name"]: tool["function"] for tool in model.bound_tools}
        assert functions["notes_search"]["description"] == "Search the notes"
        assert functions["notes_search"]["parameters"] == SEARCH_SCHEMA
        assert functions["notes_read"]["parameters"] == READ_SCHEMA
        # A direct call (no model tool call) gives the upstream's JSON.
        hits = search.invoke({"query": "biscuit"})
        assert {"path": "/notes/biscuit", "text": NOTE} in hits["hits"]


def test_langchain_arguments_reach_leash_unchanged(broker: BrokerProcess) -> None:
    """`config` and `run_manager` are ordinary argument names: a plain StructuredTool
    would drop them (and the call would succeed); here they reach the broker, whose schema
    check refuses them."""
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("langchain arguments", ["notes.read"]) as task,
    ):
        [read] = lc.tools(task)
        call = {
            "type": "tool_call",
            "id": "call-9",
            "name": read.name,
            "args": {"path": "/notes/leash", "config": {"x": 1}, "run_manager": "y"},
        }
        answer = read.invoke(call)
        assert isinstance(answer, ToolMessage)
        assert answer.status == "error"
        assert "invalid_arguments" in str(answer.content)
        assert admitted(broker, task.id) == []


# --- OpenAI Agents SDK -----------------------------------------------------------------


def assert_agents_success(result: Any, model: openai_agents_agent.ScriptedModel) -> None:
    """The loop called notes_search once, got the note, and the model saw it."""
    assert model.turn == 2
    [output] = openai_agents_agent.tool_outputs(model)
    assert NOTE in output
    assert NOTE in str(result.final_output)
    outputs = [item for item in result.new_items if item.type == "tool_call_output_item"]
    assert len(outputs) == 1
    assert NOTE in str(outputs[0].output)


def assert_agents_refusal(result: Any, model: openai_agents_agent.ScriptedModel) -> None:
    """The refusal came back as the tool's output string and the run went on."""
    assert model.turn == 2
    [output] = openai_agents_agent.tool_outputs(model)
    assert "capability_denied" in output
    assert "capability_denied" in str(result.final_output)


async def test_openai_agents_calls_through_leash(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("agents sdk", ["notes.search", "notes.read"]) as task,
    ):
        model = openai_agents_agent.ScriptedModel()
        result = await openai_agents_agent.run_agent(await oa.atools(task), model)
        assert_agents_success(result, model)
        calls = admitted(broker, task.id)
        assert calls == [{"tool": "notes.search", "task_id": task.id, "agent": AGENT}]


def test_openai_agents_example_run(broker: BrokerProcess) -> None:
    before = len(broker.upstream_calls())
    answer = openai_agents_agent.run(broker.url, broker.credential(AGENT))
    assert NOTE in answer
    new = broker.upstream_calls()[before:]
    assert [(call["tool"], call["agent"]) for call in new] == [("notes.search", AGENT)]


async def test_openai_agents_refusal_is_the_tool_output(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("agents sdk refusal", ["notes.search", "notes.read"]) as task,
    ):
        sub = leash.Task.from_token(broker.url, task.attenuate(ONLY_READ))
        model = openai_agents_agent.ScriptedModel()
        result = await openai_agents_agent.run_agent(oa.tools(sub, listed=task.tools()), model)
        assert_agents_refusal(result, model)
        assert admitted(broker, task.id) == []


async def test_openai_agents_async_task(broker: BrokerProcess) -> None:
    async with leash.AsyncBroker(broker.url, broker.credential(AGENT)) as client:
        task = await client.start_task("agents sdk async", ["notes.search", "notes.read"])
        async with task:
            model = openai_agents_agent.ScriptedModel()
            result = await openai_agents_agent.run_agent(await oa.atools(task), model)
            assert_agents_success(result, model)
            assert len(admitted(broker, task.id)) == 1

            sub = leash.AsyncTask.from_token(broker.url, await task.attenuate(ONLY_READ))
            model = openai_agents_agent.ScriptedModel()
            listed = await task.tools()
            result = await openai_agents_agent.run_agent(oa.tools(sub, listed=listed), model)
            assert_agents_refusal(result, model)
            assert len(admitted(broker, task.id)) == 1


async def test_openai_agents_tool_list(broker: BrokerProcess) -> None:
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("agents sdk tools", ["notes.search", "notes.read"]) as task,
    ):
        made = {tool.name: tool for tool in oa.tools(task)}
        assert sorted(made) == ["notes_read", "notes_search"]
        search, read = made["notes_search"], made["notes_read"]
        assert (search.leash_name, read.leash_name) == ("notes.search", "notes.read")
        assert search.description == "Search the notes"
        assert read.description == "Read one note by path"
        assert search.params_json_schema == SEARCH_SCHEMA
        assert read.params_json_schema == READ_SCHEMA
        assert search.strict_json_schema is False
        # What the model is given on its first turn.
        model = openai_agents_agent.ScriptedModel()
        await openai_agents_agent.run_agent(list(made.values()), model)
        seen = {tool.name for tool in model.tools_seen[0]}
        assert seen == {"notes_search", "notes_read"}


async def test_openai_agents_arguments_not_an_object(broker: BrokerProcess) -> None:
    from agents.tool_context import ToolContext

    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("agents sdk bad arguments", ["notes.search"]) as task,
    ):
        [search] = oa.tools(task)
        for bad in ("[1, 2]", "{not json"):
            context = ToolContext(
                context=None, tool_name=search.name, tool_call_id="c", tool_arguments=bad
            )
            answer = await search.on_invoke_tool(context, bad)
            assert "JSON object" in answer
        assert admitted(broker, task.id) == []


# --- Both ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [lc, oa], ids=["langchain", "openai_agents"])
def test_model_names(broker: BrokerProcess, module: Any) -> None:
    """Dots become underscores; names that would clash or be too long get a digest, and
    every name is one a provider accepts."""
    long = "very.long." + "x" * 100
    listed = [
        leash.ToolInfo("notes.search", "a", {"type": "object"}),
        leash.ToolInfo("a.b", "b", {"type": "object"}),
        leash.ToolInfo("a_b", "c", {"type": "object"}),
        leash.ToolInfo(long, "d", {"type": "object"}),
    ]
    with (
        leash.Broker(broker.url, broker.credential(AGENT)) as client,
        client.start_task("names", ["notes.search"]) as task,
    ):
        made = module.tools(task, listed=listed)
    names = [tool.name for tool in made]
    assert names[0] == "notes_search"
    assert all(VALID_NAME.fullmatch(name) for name in names)
    assert len(set(names)) == len(names)
    assert names[1].startswith("a_b_")
    assert names[2].startswith("a_b_")
    assert names[3].startswith("very_long_xxx")
    assert [tool.leash_name for tool in made] == ["notes.search", "a.b", "a_b", long]


def test_import_leash_needs_no_framework() -> None:
    code = (
        "import sys, leash\n"
        "assert 'langchain_core' not in sys.modules, 'langchain_core imported'\n"
        "assert 'agents' not in sys.modules, 'agents imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("leash.integrations.langchain", "langchain_core", "leash-sdk[langchain]"),
        ("leash.integrations.openai_agents", "agents", "leash-sdk[openai-agents]"),
    ],
)
def test_missing_framework_names_the_extra(module: str, framework: str, extra: str) -> None:
    # A None entry in sys.modules makes `import framework` fail as if it were missing.
    code = (
        f"import sys; sys.modules[{framework!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert extra in done.stdout.decode()
