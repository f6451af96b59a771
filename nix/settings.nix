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
, # services.pyron.settings: keys as in Pyron's README, lower case without PYRON_.
  settings ? { }
,
}:

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
  // settings
