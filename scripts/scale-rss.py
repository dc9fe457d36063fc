#!/usr/bin/env python3
"""Peak RSS of a `leash serve` at scale, and how long revoking an agent with all of that
takes: 100,000 active tasks of agent `bench` (each with a token) and 1,000,000 revoked ids
with open windows are written into a fresh data folder, the broker is started on it, and
`POST /v1/agents/bench/revoke` is timed. Prints VmHWM / VmRSS after start, after a mint
and after the revoke. Then the same million revoked ids with windows long past, no tasks:
they are forgotten at start, and cost no memory.
Usage: scripts/scale-rss.py [path/to/leash]"""
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import leash_process

LEASH = sys.argv[1] if len(sys.argv) > 1 else "target/release/leash"
ADMIN = "rss-measure-admin-token"
PORT = 7393
TASKS = 100_000
REVOKED = 1_000_000


def start(data: str, policies: str) -> "subprocess.Popen[bytes]":
    return leash_process.start(LEASH, PORT, policies, data,
                               {"LEASH_ADMIN_TOKEN": ADMIN, "LEASH_RATE_LIMIT": "0"})


def rss(proc: "subprocess.Popen[bytes]") -> str:
    fields = {}
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    peak, now = (int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS"))
    return f"peak RSS {peak:.1f} MiB, RSS {now:.1f} MiB"


def post(path: str, bearer: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        result: dict[str, object] = json.load(answer)
        return result


def task_id(i: int) -> str:
    """The `i`th seeded task's id, spread over the id space as random ids are."""
    return f"tsk_{(i * 0x9E3779B97F4A7C15F39CC0605CEDC835) % (1 << 128):032x}"


def seeded(folder: str, tasks: int, expires_at_ms: int) -> "subprocess.Popen[bytes]":
    """A broker on a fresh data folder in `folder` holding `tasks` active tasks of `bench`
    (each with a token) and REVOKED revoked ids whose windows end at `expires_at_ms`."""
    policies, data = leash_process.bench_policies(folder), os.path.join(folder, "data")
    start(data, policies).terminate()
    time.sleep(1)
    db = sqlite3.connect(os.path.join(data, "leash.db"))
    db.executemany(
        "INSERT INTO tasks (task_id, agent, purpose, tools, checks, state, created_at_ms,"
        " expires_at_ms, calls, last_activity_ms) VALUES (?, 'bench', 'seed', '[\"bench.echo\"]',"
        " '[]', 'active', 0, 4000000000000, 0, 0)",
        ((task_id(i),) for i in range(tasks)))
    db.executemany(
        "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES (?, ?, 0)",
        # Ids spread like real ones (128 hex digits, an ed25519 signature), in indexes
        # keyed by their first digits.
        ((f"{(i * 0xC2B2AE3D27D4EB4F + 1) % (1 << 64):016x}{i:0112x}", task_id(i))
         for i in range(tasks)))
    db.executemany(
        "INSERT INTO revocations (revocation_id, task_id, reason, at_ms, expires_at_ms)"
        " VALUES (?, NULL, 'token', 0, ?)",
        ((f"{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}" + "0" * 112, expires_at_ms)
         for i in range(REVOKED)))
    db.commit()
    db.close()
    broker = start(data, policies)
    time.sleep(1)
    return broker


now_ms = int(time.time() * 1000)
with tempfile.TemporaryDirectory() as folder:
    broker = seeded(folder, TASKS, now_ms + 3_600_000)
    print(f"{TASKS:,} tasks, {REVOKED:,} revoked ids (windows open), after start: {rss(broker)}")
    credential = str(post("/v1/agents/bench/credentials", ADMIN, {})["credential"])
    post("/v1/tasks", credential, {"purpose": "x", "tools": ["bench.echo"], "ttl_seconds": 600})
    print(f"after a mint: {rss(broker)}")
    started = time.monotonic()
    revoked = post("/v1/agents/bench/revoke", ADMIN, {})
    print(f"agent revoke: {revoked['revoked_tasks']} tasks in {time.monotonic() - started:.2f} s")
    time.sleep(3)
    print(f"after the revoke: {rss(broker)}")
    broker.terminate()
    broker.wait()
with tempfile.TemporaryDirectory() as folder:
    broker = seeded(folder, 0, now_ms - 3_600_000)
    print(f"no tasks, {REVOKED:,} revoked ids (windows past, pruned), after start: {rss(broker)}")
    broker.terminate()
    broker.wait()
