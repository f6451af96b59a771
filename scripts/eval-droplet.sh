#!/usr/bin/env bash
# Evaluates the droplet's NixOS configuration against a nixpkgs checkout given on the
# command line (nix/eval-droplet.nix) and prints its failed assertions, its warnings and
# the rendered systemd units of Pyron, Redis, MongoDB and NGINX. For whoever has a nixpkgs
# checkout and a Nix it accepts (nixpkgs 26.x wants Nix 2.18 or newer); nothing is built.
# usage: scripts/eval-droplet.sh NIXPKGS [DISKO]
#   NIXPKGS  a nixpkgs checkout, e.g. of the revision flake.lock pins
#   DISKO    a checkout of nix-community/disko; without it, disko's options are stubbed
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then sed -n 6,8p "$0" >&2; exit 2; fi
nixpkgs=$(cd "$1" && pwd)
args=(--arg nixpkgs "$nixpkgs")
if [ $# -eq 2 ]; then
  args+=(--arg disko "$(cd "$2" && pwd)")
fi
cd "$(dirname "$0")/.."
echo "==> evaluating nix/droplet.nix against $nixpkgs" >&2
nix-instantiate --eval --strict --json "${args[@]}" nix/eval-droplet.nix | python3 -c '
import json, sys
result = json.load(sys.stdin)
for message in result["failedAssertions"]:
    print("FAILED ASSERTION:", message)
for warning in result["warnings"]:
    print("warning:", warning)
for name, text in result["units"].items():
    print(f"\n# {name}\n{text}")
sys.exit(1 if result["failedAssertions"] else 0)
'
