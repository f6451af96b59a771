#!/usr/bin/env bash
# Writes dev/nginx.conf.in, with dev/nginx-server.conf in it and its placeholders filled,
# to standard output.
# usage: render-nginx.sh PREFIX HTTP_LISTEN HTTPS_LISTEN HTTPS_PORT CERT KEY UPSTREAM
# HTTPS_PORT is ":8443" when redirects must name the port, "" for 443. BODY_LIMIT (65536),
# CLIENT_TIMEOUT (10), RATE (50), BURST (200) and ERRORS (this repository's
# dev/nginx-errors.conf, as an absolute path) come from the environment when set.
set -euo pipefail
[ $# -eq 7 ] || { sed -n 3,6p "$0" >&2; exit 2; }
dev=$(cd "$(dirname "$0")/../dev" && pwd)
# dev/nginx-server.conf goes in first, at @SERVER@; then every placeholder is filled.
sed -e "/^ *@SERVER@$/{r $dev/nginx-server.conf" -e "d}" "$dev/nginx.conf.in" |
  sed -e "s#@PREFIX@#$1#g" \
    -e "s#@HTTP_LISTEN@#$2#" \
    -e "s#@HTTPS_LISTEN@#$3#" \
    -e "s#@HTTPS_PORT@#$4#" \
    -e "s#@CERT@#$5#" \
    -e "s#@KEY@#$6#" \
    -e "s#@UPSTREAM@#$7#" \
    -e "s#@BODY_LIMIT@#${BODY_LIMIT:-65536}#g" \
    -e "s#@CLIENT_TIMEOUT@#${CLIENT_TIMEOUT:-10}#g" \
    -e "s#@RATE@#${RATE:-50}#" \
    -e "s#@BURST@#${BURST:-200}#" \
    -e "s#@ERRORS@#${ERRORS:-$dev/nginx-errors.conf}#"
