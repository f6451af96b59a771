# The HTTPS virtual host's own directives, as the NixOS module writes them: the one copy in
# dev/nginx-server.conf (which the dev and test NGINX use too) with its placeholders filled
# and NGINX's error pages (dev/nginx-errors.conf) inlined.
#
# Pure Nix: scripts/check-nginx.sh evaluates it and runs gixy over the result.
{
  # Largest body in bytes, the same as Pyron's `body_limit`.
  bodyLimit ? 65536
, # Seconds a sender may take to send its headers or its body.
  clientTimeout ? 10
,
}:

builtins.replaceStrings
  [ "@BODY_LIMIT@" "@CLIENT_TIMEOUT@" "include @ERRORS@;" ]
  [ (toString bodyLimit) (toString clientTimeout) (builtins.readFile ../dev/nginx-errors.conf) ]
  (builtins.readFile ../dev/nginx-server.conf)
