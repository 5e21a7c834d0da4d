#!/usr/bin/env bash
# The container image, built and run for real with podman (no Docker, no registry).
#
#   tests/image/run.sh [BINARY]     (root; scripts/test runs it after cargo test)
#
# BINARY is a release build of portcullis for this machine's Debian (default: cargo
# build --release). What it proves, each step failing loudly with what went wrong:
#  1. deploy/Dockerfile's runtime stage builds (podman build --isolation=chroot
#     --format docker) on a Debian bookworm base made with debootstrap from the mirror
#     apt uses, with an image holding BINARY in place of the build stage (which needs
#     a Rust image no registry here serves).
#  2. With no mounts: the gateway runs as uid 10001; `portcullis health`, `kong health`
#     and `podman healthcheck run` pass; port 8000 answers /mcp 403 and /anything 404;
#     8443 serves TLS with the generated self-signed certificate for localhost.
#  3. Supabase's way, as deploy/docker-compose.portcullis.yml runs it (its volumes,
#     environment and entrypoint, read from that file): Supabase's kong-entrypoint.sh
#     and kong.yml (tests/fixtures/supabase/, unmodified); key-auth and acl answer as
#     Kong does (no key 401, anon key through to a stub upstream, anon on an admin route
#     403); an in-place edit and a rename-over edit of the mounted kong.yml both reload
#     the gateway; SIGTERM drains an in-flight request and exits 0 within the drain
#     timeout; `podman logs` has combined access-log lines on stdout.
#  4. Prints the image size and the start time.
#
# What this host needs, and why: runc (crun cannot run containers on this host's mixed
# cgroup layout), nofile/nproc ulimits within the sandbox's hard limits, --format docker
# (OCI images drop HEALTHCHECK), `podman healthcheck run` by hand (no systemd timers).
# The stub upstreams run on the host inside the container's network namespace
# (nsenter -n), on its loopback: nothing listens outside the container.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=localhost/debian:bookworm-slim
IMAGE=localhost/portcullis-image-test:latest
BIN_IMAGE=localhost/portcullis-image-test-binary:latest
SUITE="debian bookworm"
T0=$(date +%s.%N)

fail() {
  echo "image test: FAILED: $*" >&2
  exit 1
}
step() { echo "== image test: $*"; }
ok() { echo "   ok: $*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman, debootstrap, nsenter); run as root"

# ---- tools -------------------------------------------------------------------------
# command → Debian package
declare -A PKG=([podman]=podman [buildah]=buildah [debootstrap]=debootstrap [runc]=runc
  [curl]=curl [openssl]=openssl [nsenter]=util-linux [flock]=util-linux)
missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  command -v apt-get >/dev/null 2>&1 ||
    fail "missing ${missing[*]} and no apt-get to install them"
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed (needed to install ${missing[*]})"
  apt_log=$(mktemp)
  apt-get install -y -qq "${missing[@]}" >"$apt_log" 2>&1 ||
    { tail -n 20 "$apt_log" >&2; fail "apt-get install ${missing[*]} failed"; }
  rm -f "$apt_log"
  for cmd in "${!PKG[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || fail "$cmd is still missing after apt-get install ${PKG[$cmd]}"
  done
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is missing (runs the stub upstream, tests/image/stub.py)"

PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
RUN_OPTS=(--runtime runc --log-driver k8s-file
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)

# ---- scratch space and cleanup -----------------------------------------------------
WORK=$(mktemp -d /var/tmp/portcullis-image-test.XXXXXX)
CONTAINERS=()
STUB_PID=
cleanup() {
  [ -n "$STUB_PID" ] && kill "$STUB_PID" 2>/dev/null
  for c in "${CONTAINERS[@]}"; do "${PODMAN[@]}" rm -f -t 0 "$c" >/dev/null 2>&1; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- the binary --------------------------------------------------------------------
BIN="${1:-}"
if [ -z "$BIN" ]; then
  step "cargo build --release --bin portcullis"
  BIN=$(cargo build --release --locked --bin portcullis --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1) || fail "cargo build --release failed"
fi
[ -x "$BIN" ] || fail "no portcullis binary at $BIN"

# ---- base image: Debian bookworm from the mirror apt uses ----------------------------
mirror() {
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list | grep -v security | head -n 1 |
    sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//') || true
  echo "${uri:-http://deb.debian.org/debian}"
}
(
  # One base image build at a time on this machine.
  flock 9
  if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    ok "base image $BASE_IMAGE (cached)"
  else
    t=$(date +%s.%N)
    m=$(mirror)
    step "debootstrap --variant=minbase $SUITE from $m (no $BASE_IMAGE yet)"
    root="$WORK/rootfs"
    debootstrap --variant=minbase ${SUITE#debian } "$root" "$m" >"$WORK/debootstrap.log" 2>&1 ||
      { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap of $SUITE from $m failed"; }
    tar -C "$root" -c . | "${PODMAN[@]}" import - "$BASE_IMAGE" >"$WORK/import.log" 2>&1 ||
      { cat "$WORK/import.log" >&2; fail "podman import of the debootstrapped root failed"; }
    rm -rf "$root"
    ok "base image $BASE_IMAGE made in $(elapsed "$t") s"
  fi
) 9>/var/tmp/portcullis-image-test.lock

# ---- build -------------------------------------------------------------------------
step "podman build: deploy/Dockerfile, runtime stage, binary $BIN"
t=$(date +%s.%N)
mkdir -p "$WORK/bin"
if command -v strip >/dev/null 2>&1; then
  strip -o "$WORK/bin/portcullis" "$BIN"
else
  cp "$BIN" "$WORK/bin/portcullis"
fi
printf 'FROM scratch\nCOPY portcullis /src/target/release/portcullis\n' >"$WORK/bin/Dockerfile"
old_image=$("${PODMAN[@]}" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
old_bin_image=$("${PODMAN[@]}" image inspect -f '{{.Id}}' "$BIN_IMAGE" 2>/dev/null || true)
"${PODMAN[@]}" build -q --isolation=chroot --format docker --pull=never \
  -t "$BIN_IMAGE" "$WORK/bin" >/dev/null || fail "podman build of the binary image failed"
# deploy/Dockerfile with its first stage (`... AS build`, the Rust compile) replaced by
# the binary image; every later line, the runtime stage, as it is.
awk -v bin="$BIN_IMAGE" '
  !seen && /^FROM .* AS build$/ { print "FROM " bin " AS build"; seen = skip = 1; next }
  skip && /^FROM / { skip = 0 }
  !skip { print }
  END { if (!seen) exit 1 }
' deploy/Dockerfile >"$WORK/Dockerfile" || fail "deploy/Dockerfile has no build stage (FROM ... AS build) to replace"
grep -q '^COPY --from=build /src/target/release/portcullis ' "$WORK/Dockerfile" ||
  fail "deploy/Dockerfile's runtime stage no longer copies /src/target/release/portcullis from the build stage"
"${PODMAN[@]}" build --isolation=chroot --format docker --pull=never \
  -f "$WORK/Dockerfile" -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
  { tail -n 30 "$WORK/build.log" >&2; fail "podman build of deploy/Dockerfile (runtime stage) failed"; }
new_image=$("${PODMAN[@]}" image inspect -f '{{.Id}}' "$IMAGE")
# The previous build's image is only a stale copy of this one.
new_bin_image=$("${PODMAN[@]}" image inspect -f '{{.Id}}' "$BIN_IMAGE")
for pair in "$old_image $new_image" "$old_bin_image $new_bin_image"; do
  read -r old new <<<"$pair"
  if [ -n "$old" ] && [ -n "$new" ] && [ "$old" != "$new" ]; then
    "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true
  fi
done
size=$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$IMAGE")
healthcheck=$("${PODMAN[@]}" image inspect -f '{{.Config.Healthcheck.Test}}' "$IMAGE")
case "$healthcheck" in
  *portcullis*health*) ;;
  *) fail "the image has no HEALTHCHECK running portcullis health (got: $healthcheck)" ;;
esac
ok "image $IMAGE built in $(elapsed "$t") s, size $((size / 1000000)) MB (debootstrapped base: larger than the real bookworm-slim)"

# ---- helpers -----------------------------------------------------------------------
# poll SECONDS CMD...: runs CMD every 0.2 s until it succeeds; fails after SECONDS.
poll() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
host_port() { # container, container port → the host port podman published it on
  "${PODMAN[@]}" port "$1" "$2/tcp" | sed -n '1s/.*://p'
}
status() { # url [curl args] → HTTP status
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@"
}
expect_status() { # want, what, url [curl args]
  local want=$1 what=$2 got
  shift 2
  got=$(status "$@") || true
  [ "$got" = "$want" ] || fail "$what: expected $want, got ${got:-no answer} ($*)"
  ok "$what: $want"
}
healthy() { "${PODMAN[@]}" exec "$1" portcullis health; }
show_logs() { # the gateway's own log (stderr), then its last access-log lines (stdout)
  echo "-- podman logs $1 (stderr, last 25 lines):" >&2
  "${PODMAN[@]}" logs "$1" 2>&1 >/dev/null | tail -n 25 >&2
  echo "-- podman logs $1 (stdout, last 5 lines):" >&2
  "${PODMAN[@]}" logs "$1" 2>/dev/null | tail -n 5 >&2
}

# ---- 2. the image alone ------------------------------------------------------------
step "run the image with no mounts"
plain="portcullis-image-test-plain-$$"
t=$(date +%s.%N)
# podman's stderr goes to a file: with no systemd it logs an error about health-check
# timers on every run and rm (harmless: `podman healthcheck run` works).
"${PODMAN[@]}" run -d --name "$plain" "${RUN_OPTS[@]}" \
  -p 127.0.0.1::8000 -p 127.0.0.1::8443 "$IMAGE" >/dev/null 2>"$WORK/run.err" ||
  { cat "$WORK/run.err" >&2; fail "podman run of $IMAGE failed"; }
CONTAINERS+=("$plain")
poll 30 healthy "$plain" || { show_logs "$plain"; fail "the gateway did not become healthy within 30 s"; }
ok "healthy $(elapsed "$t") s after podman run (start time)"

uid=$("${PODMAN[@]}" exec "$plain" awk '/^Uid:/ { print $2 }' /proc/1/status)
[ "$uid" = 10001 ] || fail "the gateway (pid 1) runs as uid $uid, not 10001"
ok "pid 1 runs as uid 10001"
"${PODMAN[@]}" exec "$plain" portcullis health >/dev/null || fail "portcullis health failed inside the container"
ok "portcullis health"
"${PODMAN[@]}" exec "$plain" kong health >/dev/null || fail "kong health failed inside the container"
ok "kong health"
"${PODMAN[@]}" healthcheck run "$plain" >/dev/null || fail "podman healthcheck run: unhealthy"
hstate=$("${PODMAN[@]}" inspect -f '{{.State.Health.Status}}' "$plain" 2>/dev/null ||
  "${PODMAN[@]}" inspect -f '{{.State.Healthcheck.Status}}' "$plain")
[ "$hstate" = healthy ] || fail "podman reports the container $hstate after podman healthcheck run"
ok "podman healthcheck run: healthy"

http=$(host_port "$plain" 8000)
https=$(host_port "$plain" 8443)
expect_status 403 "GET /mcp on 8000" "http://127.0.0.1:$http/mcp"
expect_status 404 "GET /anything on 8000" "http://127.0.0.1:$http/anything"
expect_status 404 "GET /anything over TLS on 8443" -k "https://127.0.0.1:$https/anything"
# The certificate served is self-signed for localhost: trusted as its own CA, it
# verifies for the name localhost.
openssl s_client -connect "127.0.0.1:$https" -servername localhost </dev/null 2>/dev/null |
  openssl x509 -out "$WORK/served.pem" 2>/dev/null || fail "8443: no certificate served"
expect_status 404 "GET /anything over TLS, verified against the served certificate as localhost" \
  --cacert "$WORK/served.pem" --resolve "localhost:$https:127.0.0.1" "https://localhost:$https/anything"
[ "$(openssl x509 -in "$WORK/served.pem" -noout -subject)" = "$(openssl x509 -in "$WORK/served.pem" -noout -issuer | sed 's/^issuer/subject/')" ] ||
  fail "8443: the certificate is not self-signed (not the generated one)"
ok "8443 serves the generated self-signed certificate for localhost"
"${PODMAN[@]}" rm -f -t 0 "$plain" >/dev/null 2>&1

# ---- 3. Supabase's way ---------------------------------------------------------------
OVERRIDE=deploy/docker-compose.portcullis.yml
# block KEY: the entries of the api-gw service's KEY block (a list or a map), one a
# line, or KEY's value when it sits on the key's own line (entrypoint: [...]).
block() {
  awk -v key="$1" '
    /^  api-gw:/ { svc = 1; next }
    svc && /^  [^ #]/ { svc = 0 }
    !svc { next }
    $0 ~ "^    " key ":" {
      rest = $0; sub("^    " key ":[[:space:]]*", "", rest)
      if (rest != "") { print rest; exit }
      inb = 1; next
    }
    inb && /^    [^ ]/ { exit }
    inb && /^[[:space:]]*#/ { next }
    inb && NF { sub(/^[[:space:]]+/, ""); sub(/[[:space:]]+#.*$/, ""); print }
  ' "$OVERRIDE"
}
# Compose's ${NAME} and ${NAME:-default}, from this script's environment.
interpolate() {
  local v=$1 re='\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}' name val
  while [[ $v =~ $re ]]; do
    name=${BASH_REMATCH[1]}
    val=${!name:-${BASH_REMATCH[3]}}
    v=${v/"${BASH_REMATCH[0]}"/$val}
  done
  printf '%s' "$v"
}
unquote() {
  local v=$1
  case "$v" in \"*\" | \'*\') v=${v:1:${#v}-2} ;; esac
  printf '%s' "$v"
}

# Supabase's docker/ folder as the override sees it, with Supabase's files.
SB="$WORK/supabase/docker"
mkdir -p "$SB/volumes/api"
cp tests/fixtures/supabase/kong.yml tests/fixtures/supabase/kong-entrypoint.sh "$SB/volumes/api/"
chmod a+r "$SB/volumes/api/"*
# The values Supabase's .env provides.
export ANON_KEY="anon-key-image-test-$$" SERVICE_ROLE_KEY="service-key-image-test-$$"
export DASHBOARD_USERNAME=supabase DASHBOARD_PASSWORD="pa'ss\"w:rd"
export API_EXTERNAL_URL="http://localhost:8000"

args=()
mapfile -t vols < <(block volumes)
[ ${#vols[@]} -gt 0 ] || fail "$OVERRIDE: no volumes under services.api-gw"
for v in "${vols[@]}"; do
  v=$(unquote "${v#- }")
  case "$v" in
    ./*) args+=(-v "$SB/${v#./}") ;;
    *) fail "$OVERRIDE: volume '$v' is not relative to Supabase's docker/ folder" ;;
  esac
done
mapfile -t envs < <(block environment)
[ ${#envs[@]} -gt 0 ] || fail "$OVERRIDE: no environment under services.api-gw"
for e in "${envs[@]}"; do
  k=${e%%:*}
  v=$(unquote "$(printf '%s' "${e#*:}" | sed 's/^[[:space:]]*//')")
  args+=(-e "$k=$(interpolate "$v")")
done
ep=$(block entrypoint)
[[ $ep == \[*\] ]] || fail "$OVERRIDE: entrypoint is not a list: ${ep:-missing}"
ep=${ep:1:${#ep}-2}
IFS=',' read -r -a ep_parts <<<"$ep"
ep_json=$(printf '%s\n' "${ep_parts[@]}" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | paste -sd, -)
args+=(--entrypoint "[$ep_json]")
case "$ep_json" in
  *kong-entrypoint.sh*) ;;
  *) fail "$OVERRIDE: the entrypoint is not Supabase's kong-entrypoint.sh: $ep_json" ;;
esac
# The upstreams this test calls, by the names Supabase's kong.yml gives them, on the
# container's loopback (where the stub runs).
for h in rest meta studio auth; do args+=(--add-host "$h:127.0.0.1"); done

step "run the image Supabase's way ($OVERRIDE: ${#vols[@]} volumes, ${#envs[@]} environment values, entrypoint [$ep_json])"
sb="portcullis-image-test-supabase-$$"
t=$(date +%s.%N)
"${PODMAN[@]}" run -d --name "$sb" "${RUN_OPTS[@]}" -p 127.0.0.1::8000 "${args[@]}" "$IMAGE" >/dev/null 2>"$WORK/run.err" ||
  { cat "$WORK/run.err" >&2; fail "podman run of $IMAGE with the override's settings failed"; }
CONTAINERS+=("$sb")
poll 30 healthy "$sb" || { show_logs "$sb"; fail "the gateway did not become healthy within 30 s (Supabase's entrypoint)"; }
ok "healthy $(elapsed "$t") s after podman run, through Supabase's kong-entrypoint.sh"
"${PODMAN[@]}" exec "$sb" kong health >/dev/null || fail "kong health failed inside the container"
ok "kong health"
"${PODMAN[@]}" healthcheck run "$sb" >/dev/null || fail "podman healthcheck run: unhealthy (Supabase's way)"
ok "podman healthcheck run: healthy"
# Supabase's script ran: its substituted copy is where KONG_DECLARATIVE_CONFIG says.
decl=$("${PODMAN[@]}" exec "$sb" sh -c 'echo "$KONG_DECLARATIVE_CONFIG"')
"${PODMAN[@]}" exec "$sb" sh -c "grep -q -- '- key: $ANON_KEY' '$decl'" ||
  fail "Supabase's kong-entrypoint.sh did not write its substituted copy to $decl"
ok "Supabase's kong-entrypoint.sh wrote $decl and handed over to /entrypoint.sh"
"${PODMAN[@]}" logs "$sb" >"$WORK/sb.out" 2>"$WORK/sb.err"
cfg=$(sed -n 's/.*watching the config for changes.*config=\([^ ]*\).*/\1/p' "$WORK/sb.err")
[ -n "$cfg" ] || { show_logs "$sb"; fail "the gateway does not watch its config file"; }
ok "the gateway serves and watches $cfg"

pid=$("${PODMAN[@]}" inspect -f '{{.State.Pid}}' "$sb")
nsenter -t "$pid" -n python3 tests/image/stub.py 3000 8080 >"$WORK/stub.log" 2>&1 &
STUB_PID=$!
poll 10 grep -q "stub listening" "$WORK/stub.log" || { cat "$WORK/stub.log" >&2; fail "the stub upstream did not start"; }

gw=$(host_port "$sb" 8000)
expect_status 401 "GET /rest/v1/items without a key" "http://127.0.0.1:$gw/rest/v1/items"
expect_status 401 "GET /rest/v1/items with a wrong key" -H "apikey: wrong" "http://127.0.0.1:$gw/rest/v1/items"
body=$(curl -s --max-time 10 -H "apikey: $ANON_KEY" "http://127.0.0.1:$gw/rest/v1/items?select=id") ||
  fail "GET /rest/v1/items with the anon key: no answer"
case "$body" in
  *'"port": 3000'*'"path": "/items?select=id"'*"\"authorization\": \"$ANON_KEY\""*) ;;
  *) fail "GET /rest/v1/items with the anon key did not reach rest:3000 as Kong sends it: ${body:0:400}" ;;
esac
ok "GET /rest/v1/items with the anon key: through to rest:3000, Authorization set by LUA_AUTH_EXPR"
expect_status 403 "GET /pg/tables with the anon key (admin only)" -H "apikey: $ANON_KEY" "http://127.0.0.1:$gw/pg/tables"
expect_status 200 "GET /pg/tables with the service key" -H "apikey: $SERVICE_ROLE_KEY" "http://127.0.0.1:$gw/pg/tables"
expect_status 401 "GET / (dashboard) without credentials" "http://127.0.0.1:$gw/"
expect_status 200 "GET / (dashboard) with the dashboard's basic-auth" -u "$DASHBOARD_USERNAME:$DASHBOARD_PASSWORD" "http://127.0.0.1:$gw/"

# Edits of the mounted kong.yml, made on the host.
KONG_YML="$SB/volumes/api/kong.yml"
mcp_body() { curl -s --max-time 5 "http://127.0.0.1:$gw/api/mcp"; }
serves() { [[ $(mcp_body) == *"$1"* ]]; }
before=$(stat -c %i "$KONG_YML")
edited=$(sed 's/Access is forbidden\./Closed: edit 1, in place./' "$KONG_YML")
printf '%s\n' "$edited" >"$KONG_YML" # same inode: truncate and write
[ "$(stat -c %i "$KONG_YML")" = "$before" ] || fail "the in-place edit changed the inode"
poll 10 serves "Closed: edit 1, in place." ||
  { show_logs "$sb"; fail "an in-place edit of the mounted kong.yml did not reload the gateway within 10 s (/api/mcp: $(mcp_body))"; }
ok "in-place edit of kong.yml reloaded the gateway"
sed 's/Closed: edit 1, in place\./Closed: edit 2, renamed over./' "$KONG_YML" >"$KONG_YML.new"
chmod a+r "$KONG_YML.new"
mv "$KONG_YML.new" "$KONG_YML" # a new inode, as many editors save
[ "$(stat -c %i "$KONG_YML")" != "$before" ] || fail "the rename-over edit kept the inode"
poll 10 serves "Closed: edit 2, renamed over." ||
  { show_logs "$sb"; fail "an edit renamed over the mounted kong.yml did not reload the gateway within 10 s (/api/mcp: $(mcp_body))"; }
ok "rename-over edit of kong.yml reloaded the gateway"

# SIGTERM with a request in flight: it completes, then the process exits 0.
drain=$("${PODMAN[@]}" exec "$sb" sh -c 'echo "${PORTCULLIS_DRAIN_TIMEOUT:-30}"')
curl -s -o "$WORK/slow.body" -w '%{http_code}' --max-time 30 -H "apikey: $ANON_KEY" \
  "http://127.0.0.1:$gw/rest/v1/slow" >"$WORK/slow.status" 2>&1 &
slow_pid=$!
poll 10 grep -q "slow request started" "$WORK/stub.log" || fail "the slow request did not reach the stub"
t=$(date +%s.%N)
"${PODMAN[@]}" kill --signal TERM "$sb" >/dev/null || fail "podman kill --signal TERM failed"
stopped() { [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$sb")" = false ]; }
poll $((drain + 5)) stopped || fail "the container still runs $((drain + 5)) s after SIGTERM (drain timeout ${drain} s)"
took=$(elapsed "$t")
wait "$slow_pid" || true
[ "$(cat "$WORK/slow.status")" = 200 ] ||
  fail "the request in flight at SIGTERM got $(cat "$WORK/slow.status") instead of 200 (not drained)"
code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$sb")
[ "$code" = 0 ] || { show_logs "$sb"; fail "the container exited $code after SIGTERM, not 0"; }
ok "SIGTERM: the in-flight request completed (200), exit 0 after $took s (drain timeout ${drain} s)"

# Access log: nginx's combined format, on the container's stdout.
combined='^[0-9a-f.:]+ - [^ ]+ \[[^]]+\] "GET /rest/v1/items\?select=id HTTP/1\.1" 200 [0-9]+ "[^"]*" "[^"]*"'
"${PODMAN[@]}" logs "$sb" >"$WORK/sb.out" 2>"$WORK/sb.err"
line=$(grep -m 1 -E "$combined" "$WORK/sb.out") ||
  { show_logs "$sb"; fail "podman logs: no combined access-log line for GET /rest/v1/items on stdout"; }
ok "podman logs (stdout): $line"

echo "image test: passed in $(elapsed "$T0") s (image size $((size / 1000000)) MB)"
