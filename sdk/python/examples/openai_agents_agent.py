"""An OpenAI Agents SDK agent whose tools are a Leash task's tools.

``agents.Runner.run`` runs its real agent loop (model → function calls → tool outputs →
model) with tools from :func:`leash.integrations.openai_agents.tools`: every call the model
asks for goes through Leash, which checks it against the task's capability and forwards it
to the tool server. No LLM account is needed: the model is a scripted
``agents.models.interface.Model`` (it asks for ``notes_search`` with ``{"query":
"biscuit"}``, then answers), so the example shows the plumbing, not a model's judgement.
Tracing is switched off (it would export to OpenAI).

Run (broker and ``examples/tool_server.py`` running, an agent allowed ``notes.search``)::

    LEASH_URL=http://127.0.0.1:7070 LEASH_CREDENTIAL=... python examples/openai_agents_agent.py
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence

from agents import Agent, ModelSettings, Runner, RunResult, Tool, set_tracing_disabled
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

import leash
from leash.integrations import openai_agents as leash_agents

QUESTION = "What do my notes say about biscuits?"


class ScriptedModel(Model):
    """A model that plays a script: turn one asks for ``notes_search``, turn two answers
    with what the tool returned (``"The notes tool answered: …"``). It records what the
    agent loop gave it: the tools of every turn (``tools_seen``) and the input items
    (``inputs``), where the tool's output comes back as a ``function_call_output`` item."""

    def __init__(self) -> None:
        self.turn = 0
        self.tools_seen: list[list[Tool]] = []
        self.inputs: list[list[TResponseInputItem]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        self.turn += 1
        self.tools_seen.append(list(tools))
        self.inputs.append(
            [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        )
        if self.turn == 1:
            arguments = json.dumps({"query": "biscuit"})
            call = ResponseFunctionToolCall(
                type="function_call", call_id="call-1", name="notes_search", arguments=arguments
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        outputs = tool_outputs(self)
        answer = f"The notes tool answered: {outputs[-1] if outputs else 'nothing'}"
        text = ResponseOutputText(type="output_text", text=answer, annotations=[])
        message = ResponseOutputMessage(
            type="message", id="msg-2", role="assistant", status="completed", content=[text]
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the scripted model does not stream (use Runner.run)")
        yield  # an async generator, as the interface asks


def tool_outputs(model: ScriptedModel) -> list[str]:
    """What the agent loop fed back to the model as tool outputs (all turns)."""
    found: list[str] = []
    for items in model.inputs:
        for item in items:
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                found.append(str(item.get("output")))
    return found


async def run_agent(tools: Sequence[Tool], model: ScriptedModel | None = None) -> RunResult:
    """Runs the agent loop with ``tools`` (say ``await leash_agents.atools(task)``);
    returns the run's result."""
    set_tracing_disabled(True)
    agent = Agent(
        name="notes",
        instructions="Answer from the user's notes.",
        model=ScriptedModel() if model is None else model,
        tools=list(tools),
    )
    return await Runner.run(agent, QUESTION)


def run(url: str, credential: str) -> str:
    """Opens a task for ``notes.search``, runs the agent, completes the task (the ``with``
    block); returns the agent's final answer."""
    with (
        leash.Broker(url, credential) as broker,
        broker.start_task("answer a question from the notes", ["notes.search"]) as task,
    ):
        result = asyncio.run(run_agent(leash_agents.tools(task)))
    return str(result.final_output)


def main() -> None:
    url = os.environ.get("LEASH_URL", "http://127.0.0.1:7070")
    credential = os.environ["LEASH_CREDENTIAL"]
    print(run(url, credential))


if __name__ == "__main__":
    main()
