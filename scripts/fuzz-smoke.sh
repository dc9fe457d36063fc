#!/usr/bin/env bash
# Smoke run of the cargo-fuzz targets in fuzz/ (token, policy, arg_facts, mcp_jsonrpc):
#  1. installs cargo-fuzz (pinned) if it is missing or another version;
#  2. builds every target (stable toolchain: RUSTC_BOOTSTRAP=1 allows the nightly
#     flags cargo-fuzz passes; ASan and debug assertions on, into fuzz/target);
#  3. per target: replays the committed corpus (fuzz/corpus/<target>) and seeds
#     (fuzz/seeds/<target>), then fuzzes from the seeds for FUZZ_SMOKE_SECONDS (default
#     15) seconds. New inputs go to a scratch folder: the committed corpus is untouched.
# Fails if any target crashes, panics, leaks or hangs (the input is saved in
# fuzz/artifacts/<target>/). Long runs: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET="${FUZZ_SMOKE_SECONDS:-15}"
TARGETS=(token policy arg_facts mcp_jsonrpc)
export RUSTC_BOOTSTRAP=1

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cargo fuzz build

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${TARGETS[@]}"; do
  corpus="fuzz/corpus/$target"
  seeds="fuzz/seeds/$target"
  mkdir -p "$scratch/$target"
  echo "== $target: replaying $(find "$corpus" "$seeds" -type f | wc -l) inputs, then fuzzing ${SECONDS_PER_TARGET}s" >&2
  # -timeout: one input taking 30 s counts as a hang (a failure).
  if ! cargo fuzz run "$target" "$scratch/$target" "$corpus" "$seeds" -- \
    -runs=0 -timeout=30 >"$scratch/$target.replay.log" 2>&1; then
    tail -n 40 "$scratch/$target.replay.log" >&2
    failed+=("$target (corpus)")
    continue
  fi
  grep -E '^#[0-9]+\s+INITED' "$scratch/$target.replay.log" >&2 || true
  # Fuzzing starts from the seeds only: replaying the whole corpus again would use up
  # the time (token inputs take milliseconds each under ASan).
  if ! cargo fuzz run "$target" "$scratch/$target" "$seeds" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1; then
    tail -n 40 "$scratch/$target.log" >&2
    failed+=("$target")
    continue
  fi
  grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units)' "$scratch/$target.log" >&2 || true
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz smoke FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz smoke passed: ${TARGETS[*]}" >&2
