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
}

# Starts the three agents of $work/outlast.toml.
start_agents() {
  local s
  for s in east west witness; do
    OUTLAST_LOG=warn "$bin" agent --config "$work/outlast.toml" --site "$s" >"$work/$s.log" 2>&1 & pids+=($!)
  done
}

# CPU (user + system) a process has used so far, in 1/100 s.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
