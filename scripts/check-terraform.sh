#!/usr/bin/env bash
# Checks terraform/ as far as this machine can without downloading providers: formatting
# (`terraform fmt -check`), tflint's terraform ruleset (terraform/.tflint.hcl), and this
# project's own policy (scripts/check-terraform.py, with python-hcl2). CI's terraform job
# adds `init` and `validate` where providers download.
set -euo pipefail
cd "$(dirname "$0")/.."

export TF_CLI_CONFIG_FILE=/dev/null
terraform=$(command -v terraform || echo .tools/venv/bin/terraform)
echo "==> $("$terraform" version | head -1): fmt -check"
"$terraform" fmt -check -recursive -diff terraform
echo "==> $(.tools/bin/tflint --version | head -1): the terraform ruleset, every rule"
(cd terraform && ../.tools/bin/tflint --format compact)
echo "==> this project's policy (python-hcl2)"
.tools/venv/bin/python scripts/check-terraform.py terraform
