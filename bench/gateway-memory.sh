#!/usr/bin/env bash
# Whether the gateway's agent holds memory per request: wrk through east's gateway to
# nginx in rounds, nobody scraping /metrics, and east's resident set after each round with
# the growth per request. A leak shows as a steady growth round after round (before the
# metrics upkeep, about 20 bytes per request); a sound agent levels off.
#   bench/gateway-memory.sh [rounds (3)] [seconds per round (10)]
# Installs nginx-light and wrk from Debian when missing. Binds loopback only, stops
# everything it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages nginx:nginx-light wrk:wrk

start_nginx 18280
{ cluster_toml 18700 18701; web_service_toml 18282 127.0.0.1:18280; } >"$work/outlast.toml"
start_agents
east=${pids[-3]}
wait_for_gateway http://127.0.0.11:18282/ 30

rss() { awk '/^VmRSS/ {print $2}' "/proc/$east/status"; }
before=$(rss)
echo "east's resident set at start: ${before} kB"
for i in $(seq 1 "$rounds"); do
  n=$(wrk -t2 -c50 -d"${secs}s" http://127.0.0.11:18282/ | awk '/requests in/ {print $1}')
  sleep 6 # past one metrics upkeep
  now=$(rss)
  awk -v i="$i" -v n="$n" -v a="$before" -v b="$now" 'BEGIN {
    printf "round %d: %d requests, resident %d kB (%+d kB, %+.1f bytes per request)\n", i, n, b, b - a, (b - a) * 1024 / n }'
  before=$now
done
