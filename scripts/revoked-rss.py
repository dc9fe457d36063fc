#!/usr/bin/env python3
"""Peak and current RSS of a `leash serve` whose store holds 1,000,000 revoked ids,
once with windows still open (they must be kept) and once with windows long past
(they are forgotten at start). Usage: scripts/revoked-rss.py [path/to/leash]"""
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

LEASH = sys.argv[1] if len(sys.argv) > 1 else "target/debug/leash"
IDS = 1_000_000


def start(data: str, port: int) -> subprocess.Popen:
    env = dict(os.environ, LEASH_ADMIN_TOKEN="rss-measure-admin-token", LEASH_LOG="warn")
    proc = subprocess.Popen(
        [LEASH, "serve", "--listen", f"127.0.0.1:{port}", "--policies", "policies", "--data", data],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the broker did not start")


def rss(proc: subprocess.Popen) -> tuple[float, float]:
    fields = {}
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    mib = lambda k: int(fields[k].split()[0]) / 1024
    return mib("VmHWM"), mib("VmRSS")


def measure(expires_at_ms: int, label: str, port: int) -> None:
    with tempfile.TemporaryDirectory() as data:
        start(data, port).terminate()
        time.sleep(1)
        db = sqlite3.connect(os.path.join(data, "leash.db"))
        db.executemany(
            "INSERT INTO revocations (revocation_id, task_id, reason, at_ms, expires_at_ms) VALUES (?, NULL, 'token', 0, ?)",
            ((f"{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}" + "0" * 112, expires_at_ms) for i in range(IDS)))
        db.commit()
        db.close()
        proc = start(data, port)
        time.sleep(1)
        peak, now = rss(proc)
        proc.terminate()
        proc.wait()
        print(f"{label}: peak RSS {peak:.1f} MiB, RSS {now:.1f} MiB")


now_ms = int(time.time() * 1000)
measure(now_ms + 3_600_000, f"{IDS:,} revoked ids, windows open (kept)", 7391)
measure(now_ms - 3_600_000, f"{IDS:,} revoked ids, windows past (pruned)", 7392)
