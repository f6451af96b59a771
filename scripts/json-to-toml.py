#!/usr/bin/env python3
"""Writes a JSON object (as nix/settings.nix evaluates to) as TOML, with the same keys and
values as `pkgs.formats.toml` would write (tables inline: `sources`, `routes` and
`destinations` read the same either way). Reads standard input, writes standard output."""

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
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in sorted(v.items())) + " }"
    raise SystemExit(f"json-to-toml: cannot write {v!r}")


settings = json.load(sys.stdin)
for key in sorted(settings):
    print(f"{key} = {value(settings[key])}")
