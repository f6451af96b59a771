# The systemd sandbox of Pyron's two services, as `serviceConfig` attributes.
#
# Pure Nix on purpose (no nixpkgs): the NixOS module merges it into both units, and CI
# evaluates it on its own (`nix-instantiate --eval --strict --json`), renders the units and
# scores them with `systemd-analyze security --offline=true` (see scripts/check-systemd.sh).
{
  # "api" or "worker".
  unit
, # Hosts the unit may talk to over IP (systemd's IPAddressAllow=). Everything Pyron needs
  # (NGINX, Redis, MongoDB) is on the same machine by default; add addresses for stores
  # elsewhere.
  ipAddressAllow ? [ "localhost" ]
,
}:

assert builtins.elem unit [
  "api"
  "worker"
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

  # Sockets: unix (journald, sd_notify, the api's socket, Redis's socket) and IP to the
  # allowed hosts only. The worker accepts no connections, so it may bind nothing.
  RestrictAddressFamilies = [
    "AF_UNIX"
    "AF_INET"
    "AF_INET6"
  ];
  IPAddressDeny = "any";
  IPAddressAllow = ipAddressAllow;
}
  // (
  if unit == "worker" then
    {
      SocketBindDeny = "any";
    }
  else
    { }
)
