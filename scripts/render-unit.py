#!/usr/bin/env python3
"""Renders a systemd unit for one of Pyron's services from the hardening settings that
nix/hardening.nix evaluates to (as JSON), the way NixOS renders `serviceConfig`: true/false
become yes/no, a list becomes one line per item. The rest of the unit mirrors what the
NixOS module sets (Type=notify, watchdog, credentials, restart policy).

usage: render-unit.py (api|worker|forwarder) HARDENING.json EXECUTABLE
"""

import json
import sys

UNITS = {
    "api": {
        "Description": "Pyron webhook receiver (pyron-api)",
        "service": [
            ("Sockets", "pyron-api.socket"),
            ("LoadCredential", "webhook-token:/run/keys/pyron-webhook-token"),
            ("LoadCredential", "admin-token:/run/keys/pyron-admin-token"),
        ],
    },
    "worker": {
        "Description": "Pyron alert worker (pyron-worker)",
        "service": [],
    },
    "forwarder": {
        "Description": "Pyron delivery forwarder (pyron-forwarder)",
        "service": [
            ("LoadCredential", "destination-bridge:/run/keys/pyron-destination-bridge"),
        ],
    },
}


def value(v):
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return str(v)


def main():
    unit, settings_file, executable = sys.argv[1:4]
    spec = UNITS[unit]
    with open(settings_file, encoding="utf-8") as f:
        settings = json.load(f)
    lines = [
        "[Unit]",
        f"Description={spec['Description']}",
        "After=network.target redis-pyron.service mongodb.service",
        "Wants=network.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={executable}",
        "WatchdogSec=30s",
        "TimeoutStartSec=5min",
        "Restart=always",
        "RestartSec=2s",
        "Environment=PYRON_CONFIG=/etc/pyron/pyron.toml",
    ]
    lines += [f"{k}={v}" for k, v in spec["service"]]
    for key in sorted(settings):
        items = settings[key] if isinstance(settings[key], list) else [settings[key]]
        lines += [f"{key}={value(item)}" for item in items]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
