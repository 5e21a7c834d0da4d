#!/bin/sh
# Portcullis container entrypoint, installed as /entrypoint.sh.
#
# Supabase's kong-entrypoint.sh ends with `exec /entrypoint.sh kong docker-start`
# (Kong's image convention); this script answers that, so Supabase's script runs
# unchanged in front of Portcullis. It also works alone:
#
#   /entrypoint.sh kong docker-start   run the gateway (Kong's start command)
#   /entrypoint.sh kong health         exit 0 when the gateway is healthy
#   /entrypoint.sh kong reload         reload the config (SIGHUP to the gateway)
#   /entrypoint.sh portcullis ...      any portcullis command
#   /entrypoint.sh                     run the gateway
#
# The gateway reads the config *template* itself (Portcullis substitutes $NAME in
# parsed values), so editing the mounted file reloads it. The file is, in order:
# PORTCULLIS_CONFIG (the compose override sets /home/kong/api/kong.yml, in the mounted
# ./volumes/api folder); /home/kong/temp.yml (where Supabase mounts kong.yml alone);
# KONG_DECLARATIVE_CONFIG; the embedded default.
#
# Without Supabase's script, the values its template expects are computed here when
# they are not already set: LUA_AUTH_EXPR, LUA_RT_WS_EXPR, LUA_FUNCTIONS_EXPR (the
# request-transformer expressions that turn opaque sb_ keys into JWTs) and
# WELL_KNOWN_OAUTH_PATH (RFC 8414 metadata path of JWT_ISSUER).
set -eu

PORTCULLIS_BIN="${PORTCULLIS_BIN:-/usr/local/bin/portcullis}"
SUPABASE_TEMPLATE="${PORTCULLIS_SUPABASE_TEMPLATE:-/home/kong/temp.yml}"

# ---- values Supabase's template refers to --------------------------------------
secret="${SUPABASE_SECRET_KEY:-}"
publishable="${SUPABASE_PUBLISHABLE_KEY:-}"
svc_jwt="${SERVICE_ROLE_KEY_ASYMMETRIC:-}"
anon_jwt="${ANON_KEY_ASYMMETRIC:-}"
if [ -n "$secret" ] && [ -n "$publishable" ]; then
  : "${LUA_AUTH_EXPR:=\$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or (headers.apikey == '$secret' and 'Bearer $svc_jwt') or (headers.apikey == '$publishable' and 'Bearer $anon_jwt') or headers.apikey)}"
  : "${LUA_RT_WS_EXPR:=\$((query_params.apikey == '$secret' and '$svc_jwt') or (query_params.apikey == '$publishable' and '$anon_jwt') or query_params.apikey)}"
  : "${LUA_FUNCTIONS_EXPR:=\$((headers.apikey == '$secret' and '$svc_jwt') or (headers.apikey == '$publishable' and '$anon_jwt') or (headers.authorization == 'Bearer $secret' and '$svc_jwt') or (headers.authorization == 'Bearer $publishable' and '$anon_jwt') or nil)}"
else
  : "${LUA_AUTH_EXPR:=\$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or headers.apikey)}"
  : "${LUA_RT_WS_EXPR:=\$(query_params.apikey)}"
  : "${LUA_FUNCTIONS_EXPR:=\$(nil)}"
fi
export LUA_AUTH_EXPR LUA_RT_WS_EXPR LUA_FUNCTIONS_EXPR

if [ -z "${WELL_KNOWN_OAUTH_PATH:-}" ]; then
  WELL_KNOWN_OAUTH_PATH="/.well-known/oauth-authorization-server"
  if [ -n "${JWT_ISSUER:-}" ]; then
    issuer="$JWT_ISSUER"
    while [ "${issuer%/}" != "$issuer" ]; do issuer="${issuer%/}"; done
    case "$issuer" in
      http://*|https://*) ;;
      *) echo "portcullis entrypoint: JWT_ISSUER must start with http:// or https:// (got: $JWT_ISSUER)" >&2; exit 1 ;;
    esac
    rest="${issuer#*://}"
    case "$rest" in
      */*) WELL_KNOWN_OAUTH_PATH="$WELL_KNOWN_OAUTH_PATH/${rest#*/}" ;;
    esac
  fi
fi
export WELL_KNOWN_OAUTH_PATH

# The opaque keys are optional in Supabase's compose (passed as `${VAR:-}`); an unset
# one must not stop the gateway: an empty key credential is skipped.
for v in SUPABASE_ANON_KEY SUPABASE_SERVICE_KEY SUPABASE_PUBLISHABLE_KEY SUPABASE_SECRET_KEY; do
  eval "[ -n \"\${$v+set}\" ] || export $v="
done

pick_config() {
  if [ -n "${PORTCULLIS_CONFIG:-}" ]; then
    echo "$PORTCULLIS_CONFIG"
  elif [ -f "$SUPABASE_TEMPLATE" ]; then
    echo "$SUPABASE_TEMPLATE"
  elif [ -n "${KONG_DECLARATIVE_CONFIG:-}" ] && [ -f "$KONG_DECLARATIVE_CONFIG" ]; then
    echo "$KONG_DECLARATIVE_CONFIG"
  fi
}

run_gateway() {
  cfg="$(pick_config)"
  if [ -n "$cfg" ]; then
    export PORTCULLIS_CONFIG="$cfg"
  fi
  # Kong's proxy access log setting: "off" turns ours off too.
  if [ "${KONG_PROXY_ACCESS_LOG:-}" = "off" ] && [ -z "${PORTCULLIS_ACCESS_LOG:-}" ]; then
    export PORTCULLIS_ACCESS_LOG=off
  fi
  exec "$PORTCULLIS_BIN" run "$@"
}

case "${1:-}" in
  "") run_gateway ;;
  kong)
    shift
    case "${1:-}" in
      docker-start|start) shift; run_gateway "$@" ;;
      health) exec "$PORTCULLIS_BIN" health ;;
      reload) kill -HUP 1 ;;
      *) echo "portcullis entrypoint: unsupported kong command '${1:-}' (docker-start, health, reload)" >&2; exit 2 ;;
    esac
    ;;
  portcullis) shift; exec "$PORTCULLIS_BIN" "$@" ;;
  run|check|explain|health) exec "$PORTCULLIS_BIN" "$@" ;;
  *) exec "$@" ;;
esac
