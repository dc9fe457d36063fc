#!/usr/bin/env python3
"""How fast an agent revoke reaches another replica, on PostgreSQL: 100,000 active tasks of
agent `bench` (each with a token) are written into a fresh schema of this machine's
PostgreSQL (127.0.0.1:5432, database `test`, trust auth), two replicas A and B are started
on it, a real task of `bench` is opened on A, and `POST /v1/agents/bench/revoke` is sent
to A. Prints A's answer time, the time until B refuses that task's token (B polled with
a call every few ms), and the time until B's `leash_revoked_ids` gauge counts every id
that A published. The schema is dropped at the end.
Usage: scripts/replica-fanout.py [path/to/leash]"""
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import leash_process

LEASH = sys.argv[1] if len(sys.argv) > 1 else "target/release/leash"
DATABASE = os.environ.get("LEASH_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
ADMIN = "fanout-measure-admin-token"
MASTER = secrets.token_hex(32)
SCHEMA = f"fanout_{secrets.token_hex(4)}"
TASKS = 100_000
PORTS = {"A": 7394, "B": 7395}


def psql(sql: str) -> str:
    return subprocess.run(["psql", DATABASE, "-qAtc", sql], check=True,
                          capture_output=True, text=True).stdout


def start(name: str, folder: str, policies: str) -> "subprocess.Popen[bytes]":
    data = os.path.join(folder, f"data-{name}")
    os.makedirs(data, exist_ok=True)
    return leash_process.start(LEASH, PORTS[name], policies, data, {
        "LEASH_ADMIN_TOKEN": ADMIN, "LEASH_RATE_LIMIT": "0", "LEASH_DATABASE_URL": DATABASE,
        "LEASH_DATABASE_SCHEMA": SCHEMA, "LEASH_MASTER_KEY": MASTER})


def request(name: str, method: str, path: str, bearer: str,
            body: "dict[str, object] | None" = None) -> "tuple[int, bytes]":
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORTS[name]}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def call(name: str, token: str) -> int:
    """The status of a tool call with `token` on replica `name`."""
    return request(name, "POST", "/v1/tools/bench.echo/call", token, {})[0]


def revoked_ids(name: str) -> int:
    _, text = request(name, "GET", "/metrics", ADMIN)
    for line in text.decode().splitlines():
        if line.startswith("leash_revoked_ids "):
            return int(float(line.split()[1]))
    raise SystemExit("no leash_revoked_ids in /metrics")


with tempfile.TemporaryDirectory() as folder:
    policies = leash_process.bench_policies(folder)
    brokers = []
    try:
        first = start("A", folder, policies)  # creates the schema
        first.terminate()
        first.wait()
        psql(f"""INSERT INTO {SCHEMA}.tasks (task_id, agent, purpose, tools, checks, state,
                   created_at_ms, expires_at_ms, calls, last_activity_ms)
                 SELECT 'tsk_' || md5('t' || i), 'bench', 'seed', '["bench.echo"]',
                   '[]', 'active', 0, 4000000000000, 0, 0 FROM generate_series(1, {TASKS}) i;
                 -- Ids and task ids spread as random ones are; ids of 128 hex digits (an
                 -- ed25519 signature).
                 INSERT INTO {SCHEMA}.task_tokens (revocation_id, task_id, issued_at_ms)
                 SELECT md5(i::text) || md5((-i)::text) || md5('a' || i) || md5('b' || i),
                   'tsk_' || md5('t' || i), 0
                 FROM generate_series(1, {TASKS}) i;
                 ANALYZE;""")
        brokers = [start("A", folder, policies), start("B", folder, policies)]
        _, body = request("A", "POST", "/v1/agents/bench/credentials", ADMIN, {})
        credential = json.loads(body)["credential"]
        _, body = request("A", "POST", "/v1/tasks", credential,
                               {"purpose": "x", "tools": ["bench.echo"], "ttl_seconds": 600})
        token = json.loads(body)["token"]
        # Before the revoke, B lets the call through to the (absent) upstream: 502 (once
        # B has read the feed up to the new task).
        for _ in range(100):
            status, body = request("B", "POST", "/v1/tools/bench.echo/call", token, {})
            if status == 502:
                break
            time.sleep(0.1)
        assert status == 502, f"B answered {status} before the revoke: {body!r}"
        before = revoked_ids("B")
        started = time.monotonic()
        status, body = request("A", "POST", "/v1/agents/bench/revoke", ADMIN, {})
        answered = time.monotonic() - started
        assert status == 200, body
        count = json.loads(body)["revoked_tasks"]
        print(f"agent revoke of {count:,} tasks: A answered in {answered:.2f} s")
        refused_at = None
        while time.monotonic() - started < 60:
            if call("B", token) in (401, 403):
                refused_at = time.monotonic() - started
                break
            time.sleep(0.002)
        print(f"B refuses the agent's token {refused_at:.2f} s after the revoke was sent"
              if refused_at is not None else "B still accepts the token after 60 s")
        while time.monotonic() - started < 120:
            if revoked_ids("B") - before >= count:
                print(f"B holds all {count:,} revoked ids "
                      f"{time.monotonic() - started:.2f} s after the revoke was sent")
                break
            time.sleep(0.02)
        else:
            print("B did not hold every revoked id within 120 s")
    finally:
        for broker in brokers:
            broker.terminate()
            broker.wait()
        psql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
