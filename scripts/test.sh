#!/usr/bin/env bash
# Runs every check: formatting, clippy with warnings denied, and all tests. The integration
# tests start their own redis-server and MongoDB wire server on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> gofmt (tools/ferretdb)"
unformatted=$(gofmt -l tools/ferretdb)
[ -z "$unformatted" ] || { echo "gofmt needed: $unformatted" >&2; exit 1; }
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets
