#!/usr/bin/env bash
# Gateway throughput and added latency: wrk through outlast's gateway and through HAProxy
# (Debian), both in front of the same nginx, in turns, in one run. Prints requests/s for
# each, the ratio, the CPU each spends per request (user and kernel apart), and the p99 each
# adds over hitting nginx directly.
#   bench/gateway.sh [seconds per turn (10)] [connections (50)] [turns each (3)]
# Installs haproxy, nginx-light and wrk from Debian when missing. Binds loopback only, stops
# everything it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-50}
pairs=${3:-3}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages haproxy:haproxy nginx:nginx-light wrk:wrk

# nginx: one small static answer, on 127.0.0.1:18080.
start_nginx 18080

# HAProxy 2.6 on 127.0.0.21:18081 in front of it.
cat >"$work/haproxy.cfg" <<CONF
global
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend web
  bind 127.0.0.21:18081
  default_backend nginx
backend nginx
  server n1 127.0.0.1:18080
CONF
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
haproxy_pid=$!

# outlast: east, west and a witness; the gateway of an active-active service on east.
{ cluster_toml 18400 18401; web_service_toml 18082 127.0.0.1:18080; } >"$work/outlast.toml"
start_agents
east_pid=${pids[-3]}
for _ in $(seq 1 100); do
  if curl -sf http://127.0.0.11:18082/ >/dev/null 2>&1 && curl -sf http://127.0.0.21:18081/ >/dev/null 2>&1; then break; fi
  sleep 0.2
done

run() { # url [pid] -> "rps p99_ms cpu_us_per_request user_us system_us"
  local bu=0 bs=0 au=0 as=0
  [ -n "${2:-}" ] && read -r bu bs < <(cpu_split "$2")
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$1" >"$work/wrk.out"
  [ -n "${2:-}" ] && read -r au as < <(cpu_split "$2")
  awk -v u=$((au - bu)) -v s=$((as - bs)) '
    /^Requests\/sec/ {rps = $2}
    /requests in/ {n = $1}
    $1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v = v / 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v = v * 1000}; p99 = v}
    END {print rps, p99, (u + s) * 10000 / n, u * 10000 / n, s * 10000 / n}' "$work/wrk.out"
}

echo "wrk: ${secs}s per turn, ${conns} connections, 2 threads, ${pairs} turns each in alternation; nginx, HAProxy and outlast share 2 cores"
read -r d_rps d_p99 _ < <(run http://127.0.0.1:18080/)
: >"$work/turns"
for ((i = 0; i < pairs; i++)); do
  echo "haproxy $(run http://127.0.0.21:18081/ "$haproxy_pid")" >>"$work/turns"
  echo "outlast $(run http://127.0.0.11:18082/ "$east_pid")" >>"$work/turns"
done
awk -v d="$d_rps" -v dp="$d_p99" '
  {n[$1]++; rps[$1] += $2; p99[$1] += $3; cpu[$1] += $4; u[$1] += $5; s[$1] += $6
   turns[$1] = turns[$1] sprintf("%s%.0f", n[$1] > 1 ? ", " : "", $2)}
  END {
    for (k in n) {rps[k] /= n[k]; p99[k] /= n[k]; cpu[k] /= n[k]; u[k] /= n[k]; s[k] /= n[k]}
    printf "nginx direct      %10.0f req/s   p99 %6.2f ms\n", d, dp;
    printf "HAProxy 2.6       %10.0f req/s   p99 %6.2f ms   %5.1f µs CPU per request   (turns: %s)\n", rps["haproxy"], p99["haproxy"], cpu["haproxy"], turns["haproxy"];
    printf "outlast gateway   %10.0f req/s   p99 %6.2f ms   %5.1f µs CPU per request   (turns: %s)\n", rps["outlast"], p99["outlast"], cpu["outlast"], turns["outlast"];
    printf "ratio outlast/HAProxy: %.2f req/s, %.2f CPU per request (below 1 = cheaper)\n", rps["outlast"] / rps["haproxy"], cpu["outlast"] / cpu["haproxy"];
    printf "CPU per request, user + kernel: HAProxy %.1f + %.1f µs, outlast %.1f + %.1f µs\n", u["haproxy"], s["haproxy"], u["outlast"], s["outlast"];
    printf "p99 added over direct: HAProxy %+.2f ms, outlast %+.2f ms\n", p99["haproxy"] - dp, p99["outlast"] - dp;
  }' "$work/turns"
