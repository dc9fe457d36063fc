"""The blocking agent client against the real broker: the whole task lifecycle,
approvals, delegation with budgets, renewal, completion on exit, and the error codes."""

from __future__ import annotations

import time

import pytest
from conftest import BrokerProcess
from helpers import Approver

import leash


@pytest.fixture
def agent(broker: BrokerProcess) -> leash.Broker:
    return leash.Broker(broker.url, broker.credential("research-bot"), approval_timeout=20)


def test_a_task_calls_its_tools_through_leash_and_dies_when_completed(
    broker: BrokerProcess, agent: leash.Broker
) -> None:
    with agent.start_task("find notes", ["notes.search", "notes.read"], ttl_seconds=120) as task:
        assert task.id.startswith("tsk_")
        assert task.expires_at is not None
        hits = task.call("notes.search", {"query": "attenuated"})
        assert [h["path"] for h in hits["hits"]] == ["/notes/biscuit"]
        note = task.call("notes.read", {"path": "/notes/mcp"})
        assert "Model Context Protocol" in note["text"]
        assert sorted(t.name for t in task.tools()) == ["notes.read", "notes.search"]
        token = task.token
    # The with block completed the task: its token is refused from now on.
    after = leash.Task.from_token(broker.url, token)
    with pytest.raises(leash.LeashError) as refused:
        after.call("notes.search", {"query": "biscuit"})
    assert (refused.value.status, refused.value.code) == (401, "task_inactive")
    seen = [c for c in broker.upstream_calls() if c["task_id"] == task.id]
    assert [c["tool"] for c in seen] == ["notes.search", "notes.read"]
    assert {c["agent"] for c in seen} == {"research-bot"}


def test_a_with_block_completes_the_task_also_when_it_fails(agent: leash.Broker) -> None:
    with pytest.raises(RuntimeError), agent.start_task("fails", ["notes.search"]) as task:
        raise RuntimeError("the agent crashed")
    with pytest.raises(leash.LeashError) as refused:
        task.call("notes.search", {"query": "x"})
    assert refused.value.code == "task_inactive"


def test_tools_lists_names_descriptions_and_schemas(agent: leash.Broker) -> None:
    with agent.start_task("list", ["notes.*"]) as task:
        tools = {t.name: t for t in task.tools()}
    assert set(tools) == {"notes.search", "notes.read", "notes.append"}
    assert tools["notes.search"].description == "Search the notes"
    assert tools["notes.search"].input_schema["required"] == ["query"]
    assert tools["notes.append"].approval == "per_call"


def test_delegation_narrows_and_budgets_bind_the_sub_agent(
    broker: BrokerProcess, agent: leash.Broker
) -> None:
    with agent.start_task("delegate", ["notes.search", "notes.read"]) as task:
        child = task.attenuate(
            ['check if call("notes.search")', "reject if token_calls($n), $n >= 2"]
        )
        sub = leash.Task.from_token(broker.url, child)
        assert sub.id == task.id
        for _ in range(2):
            sub.call("notes.search", {"query": "leash"})
        with pytest.raises(leash.LeashError) as spent:
            sub.call("notes.search", {"query": "leash"})
        assert (spent.value.status, spent.value.code) == (429, "budget_exhausted")
        # A grandchild of the spent child is refused too: appending never resets a budget.
        grandchild = leash.Task.from_token(broker.url, sub.attenuate(["check if true"]))
        with pytest.raises(leash.LeashError) as also_spent:
            grandchild.call("notes.search", {"query": "leash"})
        assert also_spent.value.code == "budget_exhausted"
        fresh = leash.Task.from_token(broker.url, task.attenuate(['check if call("notes.search")']))
        with pytest.raises(leash.LeashError) as narrowed:
            fresh.call("notes.read", {"path": "/notes/mcp"})
        assert (narrowed.value.status, narrowed.value.code) == (403, "capability_denied")
        assert 'call("notes.search")' in narrowed.value.message
        # The parent is untouched, and can revoke just the child.
        task.call("notes.read", {"path": "/notes/mcp"})
        other = task.attenuate(['check if call("notes.read")'])
        task.revoke_token(other)
        with pytest.raises(leash.LeashError) as revoked:
            leash.Task.from_token(broker.url, other).call("notes.read", {"path": "/notes/mcp"})
        assert (revoked.value.status, revoked.value.code) == (401, "token_revoked")
        task.call("notes.read", {"path": "/notes/leash"})
    # Completing the parent ends the children.
    with pytest.raises(leash.LeashError) as ended:
        sub.call("notes.search", {"query": "x"})
    assert ended.value.code == "task_inactive"


def test_a_sub_agent_can_complete_the_task_with_its_token(
    broker: BrokerProcess, agent: leash.Broker
) -> None:
    task = agent.start_task("handover", ["notes.search"])
    sub = leash.Task.from_token(broker.url, task.token)
    sub.complete()
    with pytest.raises(leash.LeashError) as refused:
        task.call("notes.search", {"query": "x"})
    assert refused.value.code == "task_inactive"


def test_renew_replaces_the_token_and_only_the_owner_may_renew(
    broker: BrokerProcess, agent: leash.Broker
) -> None:
    with agent.start_task("renew", ["notes.search"], ttl_seconds=60) as task:
        old_token, old_end = task.token, task.expires_at
        task.renew(600)
        assert task.token != old_token
        assert task.expires_at is not None
        assert old_end is not None
        assert task.expires_at > old_end
        task.call("notes.search", {"query": "leash"})
        sub = leash.Task.from_token(broker.url, task.token)
        with pytest.raises(leash.LeashError) as not_owner:
            sub.renew(600)
        assert not_owner.value.code == "bad_token"


def test_issuance_approval_is_waited_for(broker: BrokerProcess) -> None:
    careful = leash.Broker(broker.url, broker.credential("careful-bot"), approval_timeout=20)
    with Approver(broker, "issuance", "needs a human") as approver:
        task = careful.start_task("needs a human", ["notes.search"])
    assert approver.decided is not None
    assert approver.decided["state"] == "approved"
    with task:
        assert task.call("notes.search", {"query": "protocol"})["hits"]


def test_a_denied_issuance_raises_task_not_activated(broker: BrokerProcess) -> None:
    careful = leash.Broker(broker.url, broker.credential("careful-bot"), approval_timeout=20)
    with (
        Approver(broker, "issuance", "will be denied", "deny"),
        pytest.raises(leash.TaskNotActivated) as denied,
    ):
        careful.start_task("will be denied", ["notes.search"])
    assert denied.value.state == "denied"


def test_an_undecided_approval_times_out(broker: BrokerProcess) -> None:
    careful = leash.Broker(broker.url, broker.credential("careful-bot"), approval_timeout=1.5)
    with pytest.raises(leash.ApprovalTimeout) as timed_out:
        careful.start_task("nobody answers", ["notes.search"])
    assert timed_out.value.approval_id


def test_per_call_approval_is_waited_for_and_the_call_repeated(
    broker: BrokerProcess, agent: leash.Broker
) -> None:
    with agent.start_task("append", ["notes.append", "notes.read"]) as task:
        with Approver(broker, "call", "append"):
            done = task.call("notes.append", {"path": "/notes/new", "text": "hello"})
        assert done == {"path": "/notes/new", "length": 5}
        assert task.call("notes.read", {"path": "/notes/new"})["text"] == "hello"
        with (
            Approver(broker, "call", "append", "deny"),
            pytest.raises(leash.LeashError) as denied,
        ):
            task.call("notes.append", {"path": "/notes/new", "text": "again"})
        assert denied.value.status == 403
    appended = [c for c in broker.upstream_calls() if c["tool"] == "notes.append"]
    assert len(appended) == 1


@pytest.mark.parametrize(
    ("tools", "tool", "arguments", "status", "code"),
    [
        (["notes.search"], "notes.read", {"path": "/notes/mcp"}, 403, "capability_denied"),
        (["notes.search"], "notes.search", {"query": 5}, 422, "invalid_arguments"),
        (["notes.search"], "notes.search", {"query": "x", "extra": 1}, 422, "invalid_arguments"),
        (["notes.search"], "nope.missing", {}, 404, "unknown_tool"),
        (["notes.read"], "notes.read", {"path": "/notes/absent"}, 502, "upstream_error"),
        (["notes.search"], "../tasks/x/complete", {}, 400, "bad_request"),
        (["notes.search"], "notes.search", {"query": "x" * (2 << 20)}, 413, "payload_too_large"),
        (["slow.echo"], "slow.echo", {}, 504, "upstream_timeout"),
    ],
)
def test_refusals_carry_the_brokers_status_and_code(
    agent: leash.Broker,
    tools: list[str],
    tool: str,
    arguments: dict[str, object],
    status: int,
    code: str,
) -> None:
    with agent.start_task("errors", tools) as task:
        with pytest.raises(leash.LeashError) as refused:
            task.call(tool, arguments)
        assert (refused.value.status, refused.value.code) == (status, code), refused.value
        assert task.token not in str(refused.value)


def test_opening_a_task_outside_the_grant_is_refused(broker: BrokerProcess) -> None:
    framework = leash.Broker(broker.url, broker.credential("framework-bot"))
    with pytest.raises(leash.LeashError) as refused:
        framework.start_task("too much", ["notes.append"])
    assert (refused.value.status, refused.value.code) == (403, "policy_denied")
    with pytest.raises(leash.LeashError) as unknown:
        framework.start_task("no such tool", ["admin.everything"])
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_tool")


def test_a_bad_credential_is_refused(broker: BrokerProcess) -> None:
    forged = leash.Broker(broker.url, "not-a-credential")
    with pytest.raises(leash.LeashError) as refused:
        forged.start_task("x", ["notes.search"])
    assert refused.value.status == 401
    assert refused.value.code in {"token_invalid", "unauthenticated"}


def test_an_unreachable_broker_is_a_clear_error() -> None:
    nowhere = leash.Broker("http://127.0.0.1:9", "cred", timeout=2)
    with pytest.raises(leash.LeashError) as refused:
        nowhere.start_task("x", ["notes.search"])
    assert (refused.value.status, refused.value.code) == (0, "unreachable")
    assert "cred" not in refused.value.message


def test_secrets_never_appear_in_repr(broker: BrokerProcess, agent: leash.Broker) -> None:
    credential = agent._credential
    with agent.start_task("repr", ["notes.search"]) as task:
        for text in (repr(agent), str(agent), repr(task), str(task)):
            assert credential not in text
            assert task.token not in text
            assert "<redacted>" in text


def test_a_token_that_is_not_a_task_token_is_refused_before_any_request(
    broker: BrokerProcess,
) -> None:
    with pytest.raises(leash.LeashError) as not_biscuit:
        leash.Task.from_token(broker.url, "garbage")
    assert not_biscuit.value.code == "bad_token"
    with pytest.raises(leash.LeashError) as credential:
        leash.Task.from_token(broker.url, broker.credential("research-bot"))
    assert "names no task" in credential.value.message


def test_attenuate_refuses_a_malformed_check(agent: leash.Broker) -> None:
    with agent.start_task("bad check", ["notes.search"]) as task:
        with pytest.raises(leash.LeashError) as bad:
            task.attenuate(["allow if true"])
        assert bad.value.code == "bad_token"
        with pytest.raises(TypeError):
            task.attenuate('check if call("notes.search")')


def test_an_expired_task_is_refused(agent: leash.Broker) -> None:
    task = agent.start_task("short", ["notes.search"], ttl_seconds=1)
    time.sleep(2.5)
    with pytest.raises(leash.LeashError) as refused:
        task.call("notes.search", {"query": "x"})
    assert (refused.value.status, refused.value.code) == (401, "token_expired")


def test_proxies_from_the_environment_are_ignored(
    broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy could hide revocations or read tokens: the SDK never uses one implicitly.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    agent = leash.Broker(broker.url, broker.credential("research-bot"))
    with agent.start_task("no proxy", ["notes.search"]) as task:
        assert task.call("notes.search", {"query": "leash"})["hits"]


def test_checks_given_at_start_are_in_the_token(agent: leash.Broker) -> None:
    checks = ['check if arg("query", $q), $q != "secret"']
    with agent.start_task("with checks", ["notes.search"], checks=checks) as task:
        task.call("notes.search", {"query": "leash"})
        with pytest.raises(leash.LeashError) as refused:
            task.call("notes.search", {"query": "secret"})
        assert (refused.value.status, refused.value.code) == (403, "capability_denied")


def test_a_sub_agents_with_block_does_not_end_the_parents_task(
    broker: BrokerProcess, agent: leash.Broker
) -> None:
    with agent.start_task("parent", ["notes.search"]) as task:
        child = task.attenuate(['check if call("notes.search")'])
        with leash.Task.from_token(broker.url, child) as sub:
            sub.call("notes.search", {"query": "leash"})
        task.call("notes.search", {"query": "leash"})  # still alive
        with leash.Task.from_token(broker.url, task.token, owns_task=True) as owner:
            owner.call("notes.search", {"query": "leash"})
        with pytest.raises(leash.LeashError) as ended:
            task.call("notes.search", {"query": "leash"})
        assert ended.value.code == "task_inactive"


def test_schema_violations_are_listed_with_their_pointers(agent: leash.Broker) -> None:
    with (
        agent.start_task("violations", ["notes.search"]) as task,
        pytest.raises(leash.LeashError) as invalid,
    ):
        task.call("notes.search", {"query": 5})
    assert invalid.value.code == "invalid_arguments"
    assert [v["pointer"] for v in invalid.value.violations] == ["/query"]
    assert "5" not in invalid.value.violations[0]["message"]  # values are masked
