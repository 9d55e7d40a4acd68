#!/usr/bin/env bash
# The demo: installs what it needs (scripts/setup.sh), builds Custos, then starts a real
# Prosody, Custos in front of it (proxy, archive, policy, review web UI on
# http://127.0.0.1:8080/) and sends sample traffic from real XMPP clients. Ctrl-C stops it.
# Arguments go to custos-demo (--dir DIR, --web-port PORT, --check).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export CUSTOS_TEST_PYTHON="${CUSTOS_TEST_PYTHON:-$ROOT/.venv/bin/python}"
cargo build --workspace --bins
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$target_dir/debug/custos-demo" "$@"
