#!/usr/bin/env python3
"""Checks flake.lock against flake.nix: lock format 7, one node per input with a locked
revision and narHash in the right shapes, `original` matching the input's URL, `follows`
as declared; and, given the team's pins (nix-pins.json), every locked node exactly as
pinned.

usage: check-flake-lock.py FLAKE-INPUTS.json flake.lock [nix-pins.json]
FLAKE-INPUTS.json is `{ inputs = (import ./flake.nix).inputs; outputArgs = ...; }` as JSON.
"""

import json
import re
import sys

errors = []


def fail(message):
    errors.append(message)


def original_of(url):
    """The lock's `original` for an input URL, as Nix writes it."""
    if url.startswith("github:"):
        owner, repo = url[len("github:"):].split("/", 1)
        return {"owner": owner, "repo": repo, "type": "github"}
    if url.startswith("https://") and re.search(r"\.tar(\.[a-z0-9]+)?$", url):
        return {"type": "tarball", "url": url}
    fail(f"input URL {url!r} is of a kind this check does not know")
    return None


def main():
    flake = json.load(open(sys.argv[1]))
    lock = json.load(open(sys.argv[2]))
    pins = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else None

    inputs = flake["inputs"]
    args = set(flake["outputArgs"]) - {"self"}
    if args != set(inputs):
        fail(f"outputs takes {sorted(args)}, inputs are {sorted(inputs)}")
    if lock.get("version") != 7:
        fail(f"lock version {lock.get('version')}, expected 7")
    nodes = lock.get("nodes", {})
    root = nodes.get(lock.get("root", ""), {})
    if set(root.get("inputs", {})) != set(inputs):
        fail(f"lock root inputs {sorted(root.get('inputs', {}))} != flake inputs {sorted(inputs)}")
    for name, spec in inputs.items():
        node = nodes.get(root.get("inputs", {}).get(name, ""), None)
        if node is None:
            fail(f"{name}: no lock node")
            continue
        locked = node.get("locked", {})
        if not re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked.get("narHash", "")):
            fail(f"{name}: narHash {locked.get('narHash')!r} is not a SHA-256 SRI hash")
        if not re.fullmatch(r"[0-9a-f]{40}", locked.get("rev", "")):
            fail(f"{name}: rev {locked.get('rev')!r} is not a commit")
        if not isinstance(locked.get("lastModified"), int):
            fail(f"{name}: lastModified missing")
        expected = original_of(spec["url"])
        if expected is not None and node.get("original") != expected:
            fail(f"{name}: original {node.get('original')} does not match the URL {spec['url']}")
        follows = {
            k: [v["follows"]] for k, v in spec.get("inputs", {}).items() if "follows" in v
        }
        if node.get("inputs", {}) != follows:
            fail(f"{name}: lock inputs {node.get('inputs', {})} != follows {follows}")
        if pins is not None:
            pin = pins.get(name)
            if pin is None:
                fail(f"{name}: not among the team's pins")
            elif pin["locked"] != locked or pin["original"] != node.get("original"):
                fail(f"{name}: lock node differs from the team's pin")
    unused = set(nodes) - {lock.get("root")} - set(root.get("inputs", {}).values())
    if unused:
        fail(f"lock nodes no input uses: {sorted(unused)}")

    if errors:
        for e in errors:
            print(f"flake.lock: {e}", file=sys.stderr)
        sys.exit(1)
    checked = "and the team's pins" if pins is not None else "(pins not beside the repository)"
    print(f"flake.lock: {len(inputs)} inputs locked, consistent with flake.nix {checked}")


main()
