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
if ! command -v mongod >/dev/null; then
  echo "==> go test (tools/ferretdb): FerretDB finds documents by _id through its index"
  tools/ferretdb/build.sh test
fi
echo "==> compose.yaml against the compose specification; Dockerfile runs as non-root"
.tools/venv/bin/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
last_user=$(awk 'toupper($1) == "USER" { user = $2 } END { print user }' Dockerfile)
if [ -z "$last_user" ] || [ "$last_user" = root ] || [ "$last_user" = 0 ]; then
  echo "Dockerfile's final stage must run as a non-root USER" >&2
  exit 1
fi
echo "==> Terraform: fmt and structure"
./scripts/check-terraform.sh
echo "==> GitHub Actions workflows and shell scripts"
./scripts/check-workflows.sh
echo "==> k6 scenarios type-check"
./scripts/check-k6.sh
echo "==> NGINX configuration: gixy, as nixpkgs runs it on the module's"
./scripts/check-nginx.sh
echo "==> Nix: parse, format, lint, flake.lock, pure evaluation"
./scripts/check-nix.sh
echo "==> systemd units: hardening evaluates, units verify, exposure within the limit"
./scripts/check-systemd.sh
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets
