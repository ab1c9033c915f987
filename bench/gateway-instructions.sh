#!/usr/bin/env bash
# The gateway's own work per proxied request, counted in instructions: east's agent runs
# under valgrind (callgrind), wrk sends GETs through its gateway to nginx, and the count of
# a quiet window is taken from the count of a loaded one of the same length. Unlike
# requests/s on a shared 2-core VM (which move ±10% between runs), the count moves by 1-2%,
# so it shows what a change to the request path saves. User space only: the kernel's share
# (about two thirds of the CPU on loopback) is not in it.
#   bench/gateway-instructions.sh [seconds per window (10)] [connections (10)]
# Prints instructions per request and the ten functions of the request path that cost the
# most (inclusive). Installs valgrind, nginx-light and wrk from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-10}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages valgrind:valgrind callgrind_annotate:valgrind nginx:nginx-light wrk:wrk

start_nginx 18180
{ cluster_toml 18600 18601; web_service_toml 18182 127.0.0.1:18180; } >"$work/outlast.toml"

# East under callgrind, counting nothing until asked; west and the witness as usual.
start_agents valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out"
east=${pids[-3]}
wait_for_gateway http://127.0.0.11:18182/ 60
sleep 2

callgrind_control -i on "$east" >/dev/null 2>&1
sleep "$secs"
callgrind_control -d "$east" >/dev/null 2>&1 # dump 1: the quiet window
wrk -t1 -c"$conns" -d"${secs}s" http://127.0.0.11:18182/ >"$work/wrk.out"
callgrind_control -d "$east" >/dev/null 2>&1 # dump 2: the loaded window

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
quiet=$(total "$work/cg.out.1")
loaded=$(total "$work/cg.out.2")
n=$(awk '/requests in/ {print $1}' "$work/wrk.out")
[ -n "$n" ] && [ "$n" -gt 0 ] || { echo "wrk completed no request" >&2; exit 1; }
echo "gateway under callgrind: ${secs}s windows, wrk -c$conns: $n requests"
echo "instructions per request (user space): $(((loaded - quiet) / n))"
echo "  (quiet window $quiet, loaded window $loaded)"
echo "most costly in the request path (inclusive, per request):"
callgrind_annotate --inclusive=yes "$work/cg.out.2" 2>/dev/null |
  awk -v n="$n" '/^ *[0-9,]+ \(/ && !/x\)$/ && /outlast_gateway::(http|pool|routes)::/ && !/::\{\{closure\}\}::\{\{closure\}\}/ {
      c = $1; gsub(",", "", c); f = $0; sub(/^[^)]*\)  */, "", f); sub(/^[^:]*\.rs:/, "", f); sub(/ \[\/.*$/, "", f);
      if (!seen[f]++) printf "  %8.0f  %s\n", c / n, f }' | head -n 10
