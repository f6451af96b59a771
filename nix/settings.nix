# Pyron's configuration file (/etc/pyron/pyron.toml) as the NixOS module writes it: what
# the module wires (the stores on this machine, NGINX as the only proxy, the sender
# allowlist) under the user's `services.pyron.settings`, which win.
#
# Pure Nix: CI evaluates it, writes the result as TOML and has `pyron-api --check-config`
# and `pyron-worker --check-config` accept it (scripts/check-nix.sh).
{
  # Redis's unix socket (services.redis.servers.pyron.unixSocket); null when Redis is
  # elsewhere (its URL then comes from the `redis-url` credential).
  redisSocket
, # Where MongoDB (or FerretDB) listens, on loopback; null when it is elsewhere (its URI
  # then comes from the `mongo-uri` credential).
  mongoPort ? 27017
, # Sender addresses or networks allowed to post alerts; empty allows anyone.
  allowedSenders ? [ ]
, # services.pyron.sources: name -> { allowedSenders, idempotencyField,
  # clientCertificate, ... }; the secrets go as credentials (`source-<name>`), not here.
  sources ? { }
, # services.pyron.destinations: name -> { kind, secretFile, ... } ; the secret file goes
  # as the forwarder's credential `destination-<name>`, the rest as written.
  destinations ? { }
, # services.pyron.routes: a list, as `[[routes]]` takes them.
  routes ? [ ]
, # services.pyron.settings: keys as in Pyron's README, lower case without PYRON_.
  settings ? { }
,
}:

let
  nonNull = attrs: builtins.removeAttrs attrs (builtins.filter (k: attrs.${k} == null) (builtins.attrNames attrs));
  source =
    name: s:
    nonNull {
      inherit name;
      allowed_senders = s.allowedSenders or null;
      idempotency_field = s.idempotencyField or null;
      client_certificate = s.clientCertificate or null;
      max_age_secs = s.maxAgeSecs or null;
    };
  destination = d: nonNull (builtins.removeAttrs d [ "secretFile" ]);
in

(if redisSocket == null then { } else { redis_url = "redis+unix://${redisSocket}"; })
// (if mongoPort == null then { } else { mongo_uri = "mongodb://127.0.0.1:${toString mongoPort}"; })
// {
  mongo_db = "pyron";
  # NGINX reaches pyron-api over its unix socket, a peer that is always trusted; nothing
  # else may set forwarding headers.
  trusted_proxies = "127.0.0.1, ::1";
}
// (
  if allowedSenders == [ ] then
    { }
  else
    {
      allowed_senders = builtins.concatStringsSep ", " allowedSenders;
    }
)
// (if sources == { } then { } else { sources = builtins.attrValues (builtins.mapAttrs source sources); })
// (if destinations == { } then { } else { destinations = builtins.mapAttrs (_: destination) destinations; })
// (if routes == [ ] then { } else { routes = map nonNull routes; })
  // settings
