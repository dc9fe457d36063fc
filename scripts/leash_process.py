"""What the measuring scripts share: a one-tool policy folder for agent `bench`, and a
`leash serve` started on 127.0.0.1 that they wait for (used by scale-rss.py and
replica-fanout.py)."""
import os
import subprocess
import time
import urllib.request


def bench_policies(folder: str) -> str:
    """A policy folder in `folder`: agent `bench` may call `bench.echo`, whose upstream
    (port 9) never answers. Returns its path."""
    policies = os.path.join(folder, "policies")
    os.makedirs(policies)
    with open(os.path.join(policies, "bench.toml"), "w") as policy:
        policy.write('[tools."bench.echo"]\nupstream = "http://127.0.0.1:9/echo"\n'
                     'input_schema = { type = "object" }\n'
                     '[agents.bench]\ntools = ["bench.*"]\nmax_ttl_seconds = 86400\n')
    return policies


def start(leash: str, port: int, policies: str, data: str,
          env: "dict[str, str]") -> "subprocess.Popen[bytes]":
    """`leash serve` on 127.0.0.1:`port` with `env` added to this environment, once its
    `/healthz` answers (a minute at most)."""
    proc = subprocess.Popen(
        [leash, "serve", "--listen", f"127.0.0.1:{port}", "--policies", policies,
         "--data", data], env=dict(os.environ, LEASH_LOG="warn", **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the broker on port {port} did not start")
