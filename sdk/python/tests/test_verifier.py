"""Tool servers: the Python Verifier and the ASGI middleware, on the example FastAPI tool
server behind the real broker, and on their own (stale feed, unknown keys, limits)."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import biscuit_auth
import httpx
import pytest
from conftest import API_KEY, BrokerProcess, policy, spawn_broker

import leash
from leash.verifier import _LruCache


def post(broker: BrokerProcess, path: str, body: object, capability: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if capability is not None:
        headers["Leash-Capability"] = capability
    return broker.http.post(broker.upstream + path, json=body, headers=headers)


def forwarded(broker: BrokerProcess, task: leash.Task, tool: str, arguments: object) -> str:
    """The capability Leash forwarded with one real call."""
    assert isinstance(arguments, dict)
    task.call(tool, arguments)
    return broker.captured["/search" if tool == "notes.search" else "/read"]


@pytest.fixture
def task(broker: BrokerProcess) -> leash.Task:
    agent = leash.Broker(broker.url, broker.credential("research-bot"))
    return agent.start_task("verifier tests", ["notes.search", "notes.read"])


def test_a_forwarded_capability_passes_once_and_only_for_its_tool(
    broker: BrokerProcess, task: leash.Task
) -> None:
    capability = forwarded(broker, task, "notes.search", {"query": "leash"})
    replay = post(broker, "/search", {"query": "leash"}, capability)
    assert replay.status_code == 200, replay.text
    # Moved to another tool's path: its forwarded block names notes.search only.
    moved = post(broker, "/read", {"path": "/notes/leash"}, capability)
    assert moved.status_code == 403
    assert moved.json()["error"]["code"] == "capability_denied"
    task.complete()


def test_a_raw_task_token_sent_directly_is_refused(broker: BrokerProcess, task: leash.Task) -> None:
    direct = post(broker, "/search", {"query": "leash"}, task.token)
    assert direct.status_code == 403
    assert direct.json()["error"]["code"] == "capability_denied"
    assert "not forwarded by Leash" in direct.json()["error"]["message"]
    task.complete()


@pytest.mark.parametrize(
    ("path", "body", "capability", "status", "code"),
    [
        ("/search", {"query": "x"}, None, 401, "unauthenticated"),
        ("/search", {"query": "x"}, "garbage", 401, "token_invalid"),
        ("/search", b"{not json", "garbage", 400, "bad_request"),
        ("/search", b'{"query": NaN}', "garbage", 400, "bad_request"),
        ("/search", b"[" * 5000 + b"]" * 5000, "garbage", 400, "bad_request"),
        ("/search", b"x" * (1024 * 1024 + 1), "garbage", 413, "payload_too_large"),
        ("/not-a-tool", {}, "garbage", 403, "forbidden"),
        ("/search", b"query=x", "garbage", 415, "bad_request"),
    ],
)
def test_bad_requests_get_the_apis_error_format(
    broker: BrokerProcess, path: str, body: object, capability: str | None, status: int, code: str
) -> None:
    headers = {"Content-Type": "application/json"}
    if body == b"query=x":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if capability is not None:
        headers["Leash-Capability"] = capability
        headers["Authorization"] = f"Bearer {API_KEY}"
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    answer = broker.http.post(broker.upstream + path, content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_public_path_is_served_without_a_capability(broker: BrokerProcess) -> None:
    assert broker.http.get(broker.upstream + "/healthz").status_code == 200


def test_a_completed_task_is_refused_at_the_tool_server(
    broker: BrokerProcess, task: leash.Task
) -> None:
    capability = forwarded(broker, task, "notes.search", {"query": "leash"})
    task.complete()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = post(broker, "/search", {"query": "leash"}, capability)
        if answer.status_code != 200:
            break
        time.sleep(0.01)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "token_revoked"


def test_revocation_reaches_a_python_verifier_within_milliseconds(
    broker: BrokerProcess,
) -> None:
    """From a revoke's 2xx to the first refusal by a separate Verifier, 20 times; the
    figures go in the README."""
    approver = broker.approver()
    agent = leash.Broker(broker.url, broker.credential("research-bot"))
    delays = []
    with leash.Verifier(broker.url) as verifier:
        for _ in range(20):
            task = agent.start_task("revoke me", ["notes.search"])
            capability = forwarded(broker, task, "notes.search", {"query": "leash"})
            verifier.verify(capability, "notes.search", {"query": "leash"})
            refused_at: list[float] = []
            codes: list[str] = []

            def hammer(
                capability: str = capability,
                refused_at: list[float] = refused_at,
                codes: list[str] = codes,
            ) -> None:
                stop = time.monotonic() + 10
                while time.monotonic() < stop:
                    try:
                        verifier.verify(capability, "notes.search", {"query": "leash"})
                    except leash.CapabilityRefused as refused:
                        refused_at.append(time.monotonic())
                        codes.append(refused.code)
                        return
                    time.sleep(0.0005)

            worker = threading.Thread(target=hammer)
            worker.start()
            time.sleep(0.05)
            broker.as_approver(approver, "POST", f"/v1/tasks/{task.id}/revoke", {"reason": "t"})
            answered = time.monotonic()
            worker.join()
            assert codes == ["token_revoked"], "the verifier never refused the revoked capability"
            delays.append(max(refused_at[0] - answered, 0.0) * 1000)
    delays.sort()
    print(
        f"\nrevoke 2xx -> first refusal at a Python verifier (ms, n={len(delays)}): "
        f"median {statistics.median(delays):.1f}, p90 {delays[int(len(delays) * 0.9) - 1]:.1f}, "
        f"max {delays[-1]:.1f}"
    )
    assert delays[-1] < 2500, delays  # within one long-poll at the very worst


def test_a_verifier_that_loses_the_feed_fails_closed(tmp_path: Path) -> None:
    process, url = spawn_broker(tmp_path, policy("http://127.0.0.1:9", "http://127.0.0.1:9"))
    try:
        agent = leash.Broker(url, _credential(url, tmp_path))
        task = agent.start_task("stale", ["notes.search"])
        verifier = leash.Verifier(url, max_staleness=1.0, accept_raw_task_tokens=True)
        verifier.verify(task.token, "notes.search", {"query": "x"})
        process.terminate()
        process.wait(timeout=10)
        time.sleep(1.6)
        with pytest.raises(leash.CapabilityRefused) as stale:
            verifier.verify(task.token, "notes.search", {"query": "x"})
        assert (stale.value.status, stale.value.code) == (503, "unavailable")
        verifier.close()
    finally:
        process.kill()


def _credential(url: str, root: Path) -> str:
    from conftest import ADMIN

    answer = httpx.post(
        f"{url}/v1/agents/research-bot/credentials", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["credential"])


def test_raw_task_tokens_pass_only_by_opt_in_and_checks_still_hold(
    broker: BrokerProcess, task: leash.Task
) -> None:
    child = task.attenuate(['check if arg("query", $q), $q.starts_with("le")'])
    with (
        leash.Verifier(broker.url) as strict,
        leash.Verifier(broker.url, accept_raw_task_tokens=True) as lenient,
    ):
        with pytest.raises(leash.CapabilityRefused) as refused:
            strict.verify(task.token, "notes.search", {"query": "x"})
        assert (refused.value.status, refused.value.code) == (403, "capability_denied")
        verified = lenient.verify(child, "notes.search", {"query": "leash"})
        assert (verified.task_id, verified.agent, verified.forwarded) == (
            task.id,
            "research-bot",
            False,
        )
        with pytest.raises(leash.CapabilityRefused) as narrowed:
            lenient.verify(child, "notes.search", {"query": "biscuit"})
        assert narrowed.value.code == "capability_denied"
        assert "starts_with" in narrowed.value.message
        with pytest.raises(leash.CapabilityRefused) as other_tool:
            lenient.verify(child, "notes.append", {"query": "leash"})
        assert "does not grant" in other_tool.value.message
        with pytest.raises(leash.CapabilityRefused) as not_an_object:
            lenient.verify(child, "notes.search", ["leash"])  # type: ignore[arg-type]
        assert not_an_object.value.status == 403
    task.complete()


def test_an_unknown_key_id_refreshes_the_keys_at_most_every_ten_seconds(
    broker: BrokerProcess,
) -> None:
    stranger = biscuit_auth.KeyPair()
    builder = biscuit_auth.BiscuitBuilder('task("tsk_x"); agent("a"); tool("notes.search");')
    builder.set_root_key_id(99)
    foreign = builder.build(stranger.private_key).to_base64()
    fetches: list[str] = []
    with leash.Verifier(broker.url, accept_raw_task_tokens=True) as verifier:
        verifier._http.event_hooks["request"].append(lambda r: fetches.append(str(r.url)))
        verifier._last_key_refresh = time.monotonic() - 60
        for _ in range(5):
            with pytest.raises(leash.CapabilityRefused) as refused:
                verifier.verify(foreign, "notes.search", {})
            assert (refused.value.status, refused.value.code) == (401, "token_invalid")
    assert len([u for u in fetches if u.endswith("/.well-known/leash/keys")]) == 1


def test_a_token_signed_by_another_root_is_invalid(broker: BrokerProcess) -> None:
    stranger = biscuit_auth.KeyPair()
    builder = biscuit_auth.BiscuitBuilder('task("tsk_x"); agent("a"); tool("notes.search");')
    builder.set_root_key_id(0)
    forged = builder.build(stranger.private_key).to_base64()
    with leash.Verifier(broker.url, accept_raw_task_tokens=True) as verifier:
        with pytest.raises(leash.CapabilityRefused) as refused:
            verifier.verify(forged, "notes.search", {})
        assert refused.value.code == "token_invalid"


def test_the_signature_cache_is_bounded() -> None:
    cache = _LruCache(3)
    for i in range(10):
        cache.put(bytes([i]), (None, "t", "a"))
    assert cache.get(bytes([0])) is None
    assert cache.get(bytes([9])) is not None
    assert len(cache._items) == 3


def test_a_verifier_for_an_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(leash.LeashError) as refused:
        leash.Verifier("http://127.0.0.1:9")
    assert refused.value.code == "unreachable"
