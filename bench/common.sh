# Sourced by the bench scripts: installs missing Debian packages, builds outlast, and sets
# up a work dir whose processes (pushed on `pids`) are stopped by pid on exit.
# usage: need_packages "cmd:package" ...
need_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
# OUTLAST_BIN=path runs that binary instead of building this checkout (to compare builds).
if [ -n "${OUTLAST_BIN:-}" ]; then
  bin=$OUTLAST_BIN
else
  cargo build --release --quiet
  bin=$PWD/target/release/outlast
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Prints the [cluster] table and three sites (east, west, witness on 127.0.0.11-13).
# usage: cluster_toml PEER_PORT API_PORT
cluster_toml() {
  echo "bench-secret-0123456789abcdef" >"$work/cluster.key"
  printf '[cluster]\nname = "bench"\nsecret_file = "cluster.key"\n'
  local site addr
  for site in east:11 west:12 witness:13; do
    addr=${site#*:}
    printf '[[sites]]\nname = "%s"\naddress = "127.0.0.%s"\npeer_port = %s\napi_port = %s\n' "${site%%:*}" "$addr" "$1" "$2"
    [ "${site%%:*}" = witness ] && printf 'witness = true\n'
  done
  # PEER_TLS=off|secret|certificates: how peer traffic is protected (bench/tls.sh compares).
  case "${PEER_TLS:-secret}" in
    off) printf '[tls]\npeer = "off"\n' ;;
    certificates)
      printf '[tls]\nca = "tls/ca.pem"\ncert = "tls/{site}.pem"\nkey = "tls/{site}.key"\n' ;;
  esac
}

# Starts the three agents of $work/outlast.toml; east's pid is then ${pids[-3]}. Words
# given go in front of east's command (a profiler that runs it, say).
# usage: start_agents [WRAPPER...]
# Certificate files named by the config are made beside it (a CA and one per site).
make_certs() {
  if grep -q 'tls/{site}.pem' "$work/outlast.toml"; then
    "$bin" certs --config "$work/outlast.toml" >/dev/null
  fi
}

start_agents() {
  local s wrap
  make_certs
  for s in east west witness; do
    wrap=()
    [ "$s" = east ] && wrap=("$@")
    OUTLAST_LOG=warn "${wrap[@]}" "$bin" agent --config "$work/outlast.toml" --site "$s" >"$work/$s.log" 2>&1 & pids+=($!)
  done
}

# Waits until east's gateway answers URL, for up to SECONDS; otherwise prints east's log
# and exits 1.
# usage: wait_for_gateway URL SECONDS
wait_for_gateway() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "east's gateway did not answer $1 within $2 s; its log:" >&2
  cat "$work/east.log" >&2
  exit 1
}

# User and system CPU a process has used so far, in 1/100 s: "user system".
cpu_split() { awk '{print $14, $15}' "/proc/$1/stat"; }

# CPU (user + system) a process has used so far, in 1/100 s.
ticks() { cpu_split "$1" | awk '{print $1 + $2}'; }

# Starts nginx (one worker) answering every request with one small static body, on
# 127.0.0.1:PORT.
# usage: start_nginx PORT
start_nginx() {
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$1 backlog=4096; location / { return 200 "hello from nginx\n"; } }
}
CONF
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
}

# Prints an active-active service "web" on PORT whose one backend at east and west is ADDR.
# usage: web_service_toml PORT ADDR
web_service_toml() {
  printf '[[services]]\nname = "web"\nmode = "active-active"\nport = %s\n' "$1"
  printf '[services.backends]\neast = ["%s"]\nwest = ["%s"]\n' "$2" "$2"
}
