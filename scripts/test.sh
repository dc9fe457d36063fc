#!/usr/bin/env bash
# The whole test suite, as CI runs it: builds the `leash` binary (the process tests
# start it), then runs every unit, integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked
