#!/usr/bin/env bash
# Type-checks the k6 scenarios with TypeScript and @types/k6 (k6 itself is not installed).
set -euo pipefail
cd "$(dirname "$0")/../k6"
[ -d node_modules/typescript ] || npm ci --silent --no-audit --no-fund
npx --no-install tsc -p .
echo "k6 scenarios type-check:" ./*.js
