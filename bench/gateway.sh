#!/usr/bin/env bash
# Gateway throughput and added latency: wrk through outlast's gateway and through HAProxy
# (Debian), both in front of the same nginx, in turns, in one run. Prints requests/s for
# each, the ratio, the CPU each spends per request (user and kernel apart), and the p99 each
# adds over hitting nginx directly.
#   bench/gateway.sh [seconds per turn (10)] [connections (50)]
# Installs haproxy, nginx-light and wrk from Debian when missing. Binds loopback only, stops
# everything it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-50}
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

echo "wrk: ${secs}s per turn, ${conns} connections, 2 threads; nginx, HAProxy and outlast share 2 cores"
read -r d_rps d_p99 _ < <(run http://127.0.0.1:18080/)
read -r h1_rps h1_p99 h1_cpu h1_u h1_s < <(run http://127.0.0.21:18081/ "$haproxy_pid")
read -r o1_rps o1_p99 o1_cpu o1_u o1_s < <(run http://127.0.0.11:18082/ "$east_pid")
read -r h2_rps h2_p99 h2_cpu h2_u h2_s < <(run http://127.0.0.21:18081/ "$haproxy_pid")
read -r o2_rps o2_p99 o2_cpu o2_u o2_s < <(run http://127.0.0.11:18082/ "$east_pid")
awk -v d="$d_rps" -v dp="$d_p99" -v h1="$h1_rps" -v h2="$h2_rps" -v o1="$o1_rps" -v o2="$o2_rps" \
    -v hp1="$h1_p99" -v hp2="$h2_p99" -v op1="$o1_p99" -v op2="$o2_p99" \
    -v hc1="$h1_cpu" -v hc2="$h2_cpu" -v oc1="$o1_cpu" -v oc2="$o2_cpu" \
    -v hu1="$h1_u" -v hu2="$h2_u" -v ou1="$o1_u" -v ou2="$o2_u" \
    -v hs1="$h1_s" -v hs2="$h2_s" -v os1="$o1_s" -v os2="$o2_s" 'BEGIN {
  h = (h1 + h2) / 2; o = (o1 + o2) / 2; hp = (hp1 + hp2) / 2; op = (op1 + op2) / 2;
  hc = (hc1 + hc2) / 2; oc = (oc1 + oc2) / 2;
  printf "nginx direct      %10.0f req/s   p99 %6.2f ms\n", d, dp;
  printf "HAProxy 2.6       %10.0f req/s   p99 %6.2f ms   %5.1f µs CPU per request   (turns: %.0f, %.0f)\n", h, hp, hc, h1, h2;
  printf "outlast gateway   %10.0f req/s   p99 %6.2f ms   %5.1f µs CPU per request   (turns: %.0f, %.0f)\n", o, op, oc, o1, o2;
  printf "ratio outlast/HAProxy: %.2f req/s, %.2f CPU per request (below 1 = cheaper)\n", o / h, oc / hc;
  printf "CPU per request, user + kernel: HAProxy %.1f + %.1f µs, outlast %.1f + %.1f µs\n", (hu1 + hu2) / 2, (hs1 + hs2) / 2, (ou1 + ou2) / 2, (os1 + os2) / 2;
  printf "p99 added over direct: HAProxy %+.2f ms, outlast %+.2f ms\n", hp - dp, op - dp;
}'
