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
cargo build --release --quiet
bin=$PWD/target/release/outlast
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
