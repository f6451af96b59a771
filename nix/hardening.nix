# The systemd sandbox of Pyron's three services, as `serviceConfig` attributes.
#
# Pure Nix on purpose (no nixpkgs): the NixOS module merges it into both units, and CI
# evaluates it on its own (`nix-instantiate --eval --strict --json`), renders the units and
# scores them with `systemd-analyze security --offline=true` (see scripts/check-systemd.sh).
{
  # "api", "worker" or "forwarder".
  unit
, # Hosts the unit may talk to over IP (systemd's IPAddressAllow=). Everything Pyron needs
  # (NGINX, Redis, MongoDB) is on the same machine by default; add addresses for stores
  # elsewhere.
  ipAddressAllow ? [ "localhost" ]
, # The forwarder only: private hosts its destinations may be on besides the internet
  # (a bridge in the VPC, say).
  forwarderAllow ? [ ]
,
}:

assert builtins.elem unit [
  "api"
  "worker"
  "forwarder"
];

{
  # A fresh unprivileged user per start, no home, nothing it can keep or share.
  DynamicUser = true;
  UMask = "0077";
  NoNewPrivileges = true;

  # No capabilities at all: pyron-api listens on a high port or on the socket systemd
  # passes, and neither binary needs root for anything.
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";

  # The file system is read-only but for what the unit is given (none: both log to
  # journald and keep their state in Redis and MongoDB).
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateMounts = true;
  PrivateDevices = true;
  DevicePolicy = "closed";
  ProtectProc = "invisible";
  ProcSubset = "pid";

  # The kernel and the rest of the system are off limits.
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  # Not PrivateUsers: in a user namespace the supplementary group that opens Redis's
  # socket would be unmapped.
  PrivateIPC = true;
  KeyringMode = "private";
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  RemoveIPC = true;

  # System calls: what a network service uses, without privileged or resource-control
  # calls; native architecture only.
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "~@privileged"
    "~@resources"
  ];
  SystemCallErrorNumber = "EPERM";

  # Sockets: unix (journald, sd_notify, the api's socket, Redis's socket) and IP.
  RestrictAddressFamilies = [
    "AF_UNIX"
    "AF_INET"
    "AF_INET6"
  ];
}
  // (
  if unit == "forwarder" then
    {
      # The one unit that reaches the internet (the destinations): every public
      # address, the stores, and nothing private or link-local: not the cloud's metadata
      # service (169.254.169.254), not the VPC, unless listed. An address both allowed
      # and denied is allowed.
      IPAddressAllow = ipAddressAllow ++ forwarderAllow;
      IPAddressDeny = [
        "link-local"
        "multicast"
        "10.0.0.0/8"
        "172.16.0.0/12"
        "192.168.0.0/16"
        "100.64.0.0/10"
        "fc00::/7"
      ];
      SocketBindDeny = "any";
    }
  else
    {
      # IP to the allowed hosts (the stores, NGINX) only.
      IPAddressDeny = "any";
      IPAddressAllow = ipAddressAllow;
    }
    # The worker accepts no connections, so it may bind nothing.
    // (if unit == "worker" then { SocketBindDeny = "any"; } else { })
)
