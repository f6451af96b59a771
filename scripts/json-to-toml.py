#!/usr/bin/env python3
"""Writes a flat JSON object (as nix/settings.nix evaluates to) as TOML, the way
`pkgs.formats.toml` would for the same keys. Reads standard input, writes standard output."""

import json
import sys


def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise SystemExit(f"json-to-toml: nested tables are not expected: {v!r}")


settings = json.load(sys.stdin)
for key in sorted(settings):
    print(f"{key} = {value(settings[key])}")
