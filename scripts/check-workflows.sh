#!/usr/bin/env bash
# Checks the GitHub Actions workflows: actionlint (with shellcheck on their scripts) and
# the workflow JSON schema; and shellcheck on the repository's own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> actionlint $(.tools/bin/actionlint -version | head -1)"
.tools/bin/actionlint .github/workflows/*.yml
echo "==> workflows against the github-workflows schema"
.tools/venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
echo "==> shellcheck"
shellcheck scripts/*.sh terraform/scripts/*.sh tools/ferretdb/*.sh
