#!/usr/bin/env python3
"""This project's own policy for terraform/, parsed with python-hcl2 (Terraform itself
cannot fetch its providers here): the provider pin, the partial S3 backend, a firewall
that opens exactly 22, 80 and 443 inbound with 22 restricted, the droplet in the VPC, the
reserved IP assigned to it, every variable validated (the regular expressions tried on
good and bad values), secrets sensitive and without a default, and the outputs the README
promises. The general rules (typed and documented variables and outputs, pinned module
sources, the standard module structure, unused declarations) are tflint's, run by
scripts/check-terraform.sh.

usage: check-terraform.py [TERRAFORM-DIR]
"""

import re
import sys
from pathlib import Path

import hcl2

errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


def load(path):
    with open(path, encoding="utf-8") as f:
        return hcl2.load(
            f,
            serialization_options=hcl2.SerializationOptions(
                strip_string_quotes=True, explicit_blocks=False
            ),
        )


def blocks(doc, kind):
    """resource/variable/output/module blocks as {type: {name: body}} or {name: body}."""
    out = {}
    for block in doc.get(kind, []):
        for key, body in block.items():
            if isinstance(body, dict) and kind == "resource":
                for name, inner in body.items():
                    out.setdefault(key, {})[name] = inner
            else:
                out[key] = body
    return out


def ref(expr, target):
    return isinstance(expr, str) and f"${{{target}" in expr


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "terraform")
    docs = {p.name: load(p) for p in sorted(root.glob("*.tf"))}
    merged = {}
    for doc in docs.values():
        for kind, items in doc.items():
            merged.setdefault(kind, []).extend(items)

    # Provider and backend.
    terraform = [b for b in merged.get("terraform", [])]
    providers = {}
    backends = {}
    for block in terraform:
        for rp in block.get("required_providers", []):
            providers.update(rp)
        for backend in block.get("backend", []):
            backends.update(backend)
    do = providers.get("digitalocean", {})
    check(do.get("source") == "digitalocean/digitalocean", "provider source is not digitalocean/digitalocean")
    check(re.fullmatch(r"~> 2\.\d+", do.get("version", "")) is not None, f"provider version {do.get('version')!r} is not pinned as ~> 2.x")
    check("s3" in backends, "no s3 backend (DigitalOcean Spaces)")
    check(not {k: v for k, v in backends.get("s3", {}).items() if not k.startswith("__")}, "the s3 backend must be a partial configuration (settings come from -backend-config)")

    resources = blocks(merged, "resource")
    droplets = resources.get("digitalocean_droplet", {})
    vpcs = resources.get("digitalocean_vpc", {})
    check(len(droplets) == 1 and len(vpcs) == 1, "expected one droplet and one VPC")
    droplet_name, droplet = next(iter(droplets.items()), ("", {}))
    vpc_name = next(iter(vpcs), "")
    check(ref(droplet.get("vpc_uuid"), f"digitalocean_vpc.{vpc_name}.id"), "the droplet is not in the VPC")
    check(ref(str(droplet.get("ssh_keys")), "var.ssh_fingerprint"), "the droplet does not take var.ssh_fingerprint")

    # Reserved IP and its assignment.
    ips = resources.get("digitalocean_reserved_ip", {})
    assignments = resources.get("digitalocean_reserved_ip_assignment", {})
    check(len(ips) == 1 and len(assignments) == 1, "expected one reserved IP and one assignment")
    ip_name = next(iter(ips), "")
    assignment = next(iter(assignments.values()), {})
    check(ref(assignment.get("ip_address"), f"digitalocean_reserved_ip.{ip_name}.ip_address"), "the assignment does not take the reserved IP")
    check(ref(assignment.get("droplet_id"), f"digitalocean_droplet.{droplet_name}.id"), "the reserved IP is not assigned to the droplet")
    project = next(iter(resources.get("digitalocean_project", {}).values()), {})
    check(ref(str(project.get("resources")), f"digitalocean_droplet.{droplet_name}.urn") and ref(str(project.get("resources")), f"digitalocean_reserved_ip.{ip_name}.urn"), "the project does not hold the droplet and the reserved IP")

    # Firewall.
    firewalls = resources.get("digitalocean_firewall", {})
    check(len(firewalls) == 1, "expected one firewall")
    firewall = next(iter(firewalls.values()), {})
    check(ref(str(firewall.get("droplet_ids")), f"digitalocean_droplet.{droplet_name}.id"), "the firewall does not cover the droplet")
    inbound = firewall.get("inbound_rule", [])
    ports = sorted(r.get("port_range") for r in inbound)
    check(ports == ["22", "443", "80"], f"inbound ports are {ports}, expected exactly 22, 80 and 443")
    check(all(r.get("protocol") == "tcp" for r in inbound), "inbound rules other than TCP")
    locals_ = {}
    for block in merged.get("locals", []):
        locals_.update(block)

    def sources(rule):
        value = rule.get("source_addresses")
        match = re.fullmatch(r"\$\{local\.(\w+)\}", value) if isinstance(value, str) else None
        return str(locals_.get(match.group(1))) if match else str(value)

    ssh = next((r for r in inbound if r.get("port_range") == "22"), {})
    check("var.admin_cidrs" in sources(ssh) and "0.0.0.0/0" not in sources(ssh) and "::/0" not in sources(ssh), f"SSH is not restricted to var.admin_cidrs: {sources(ssh)}")
    https = next((r for r in inbound if r.get("port_range") == "443"), {})
    check("var.tradingview_ips" in sources(https), "443 cannot be restricted to TradingView's addresses")
    outbound = sorted((r.get("protocol"), r.get("port_range", "")) for r in firewall.get("outbound_rule", []))
    check(("udp", "53") in outbound and ("tcp", "443") in outbound and ("tcp", "80") in outbound, f"outbound lacks DNS or HTTP(S): {outbound}")
    check(not any(p in ("6379", "27017") for _, p in outbound), "Redis or MongoDB ports in the firewall")

    # Variables.
    variables = blocks(merged, "variable")
    for seed in ["do_token", "ssh_fingerprint", "git_repo", "git_branch"]:
        check(seed in variables, f"the seed's variable {seed} is missing")
    for name, var in variables.items():
        secret = re.search(r"token|secret|password|private_key", name) is not None
        if secret:
            check(var.get("sensitive") is True, f"variable {name} holds a secret but is not sensitive")
        if var.get("sensitive"):
            check("default" not in var, f"secret variable {name} has a default")
        if var.get("type") not in ("${bool}", "bool"):
            check(bool(var.get("validation")), f"variable {name} does not validate its input")

    admin = variables.get("admin_cidrs", {})
    check(any("0.0.0.0/0" in str(v.get("condition")) for v in admin.get("validation", [])), "admin_cidrs does not refuse 0.0.0.0/0")
    check("default" not in admin, "admin_cidrs must be given, not defaulted")

    # Each regex(...) in a validation, tried on values that must pass and must fail.
    samples = {
        "ssh_fingerprint": (["3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"], ["SHA256:abc", "3b:16:bf"]),
        "webhook_token": (["change-me", "a1b2c3d4e5f6"], ["short", "has space in it", "slash/inside"]),
        "git_repo": (["https://github.com/you/pyron"], ["git@github.com:you/pyron.git", "https://has space"]),
        "git_branch": (["main", "feature/x-1"], ["bad branch", "semi;colon"]),
        "name": (["pyron", "pyron-prod"], ["Pyron", "1pyron", "p"]),
        "domain": (["alerts.example.com"], ["Alerts.Example.com", "no_tld", "http://x.com"]),
        "ssh_private_key": (["-----BEGIN OPENSSH PRIVATE KEY-----\nabc"], ["ssh-ed25519 AAAA"]),
    }
    for name, (good, bad) in samples.items():
        conditions = [str(v.get("condition")) for v in variables.get(name, {}).get("validation", [])]
        patterns = [m.encode().decode("unicode_escape") for c in conditions for m in re.findall(r'regex\("((?:[^"\\]|\\.)*)"', c)]
        check(bool(patterns), f"variable {name} has no regex validation to try")
        for pattern in patterns:
            for value in good:
                check(re.search(pattern, value) is not None, f"{name}: {value!r} should pass {pattern!r}")
            for value in bad:
                check(re.search(pattern, value) is None, f"{name}: {value!r} should fail {pattern!r}")

    outputs = blocks(merged, "output")
    for name in ["reserved_ip", "webhook_url"]:
        check(name in outputs, f"output {name} is missing")
    check(ref(outputs.get("reserved_ip", {}).get("value"), f"digitalocean_reserved_ip.{ip_name}.ip_address"), "output reserved_ip is not the reserved IP")
    check("/webhook/" in str(outputs.get("webhook_url", {}).get("value")), "output webhook_url is not a webhook URL")

    if errors:
        for e in errors:
            print(f"terraform: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"terraform: {len(docs)} files, {sum(len(v) for v in resources.values())} resources, "
          f"{len(variables)} variables, {len(outputs)} outputs: structure as expected")


main()
