#!/usr/bin/env bash
# The test command: installs/checks the end-to-end prerequisites, then runs
# every test in the workspace (unit, property and end-to-end scenarios).
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p custos-e2e`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

locked=()
if [ -f Cargo.lock ]; then
    locked=(--locked)
fi

# The scenarios find the slixmpp client's interpreter here (setup.sh made it).
export CUSTOS_TEST_PYTHON="${CUSTOS_TEST_PYTHON:-$ROOT/.venv/bin/python}"

if [ "$#" -gt 0 ]; then
    cargo build "${locked[@]}" --workspace --bins
    cargo test "${locked[@]}" "$@"
else
    # The scenarios run the real `custos` binary: build it first (`cargo test` alone
    # builds only test harnesses for a package without integration tests).
    cargo build "${locked[@]}" --workspace --bins
    # This includes the review UI in a real Chromium: the scenario crate enables the web
    # UI's `browser` feature for tests (the served binary never carries a browser client).
    cargo test "${locked[@]}" --workspace
fi
