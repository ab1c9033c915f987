#!/usr/bin/env bash
# Gateway throughput and added latency: wrk through outlast's gateway and through HAProxy
# (Debian), both in front of the same nginx, in turns, in one run. Prints requests/s for
# each, the ratio, and the p99 each adds over hitting nginx directly.
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
  server { listen 127.0.0.1:18080 backlog=4096; location / { return 200 "hello from nginx\n"; } }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)

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

# outlast: east, west and a witness; the gateway of an active-active service on east.
{ cluster_toml 18400 18401; cat <<CONF
[[services]]
name = "web"
mode = "active-active"
port = 18082
[services.backends]
east = ["127.0.0.1:18080"]
west = ["127.0.0.1:18080"]
CONF
} >"$work/outlast.toml"
start_agents
for _ in $(seq 1 100); do
  if curl -sf http://127.0.0.11:18082/ >/dev/null 2>&1 && curl -sf http://127.0.0.21:18081/ >/dev/null 2>&1; then break; fi
  sleep 0.2
done

run() { # url -> "rps p99_ms"
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$1" >"$work/wrk.out"
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' "$work/wrk.out")
  echo "$rps $p99"
}

echo "wrk: ${secs}s per turn, ${conns} connections, 2 threads; nginx, HAProxy and outlast share 2 cores"
read -r d_rps d_p99 < <(run http://127.0.0.1:18080/)
read -r h1_rps h1_p99 < <(run http://127.0.0.21:18081/)
read -r o1_rps o1_p99 < <(run http://127.0.0.11:18082/)
read -r h2_rps h2_p99 < <(run http://127.0.0.21:18081/)
read -r o2_rps o2_p99 < <(run http://127.0.0.11:18082/)
awk -v d="$d_rps" -v dp="$d_p99" -v h1="$h1_rps" -v h2="$h2_rps" -v o1="$o1_rps" -v o2="$o2_rps" \
    -v hp1="$h1_p99" -v hp2="$h2_p99" -v op1="$o1_p99" -v op2="$o2_p99" 'BEGIN {
  h = (h1 + h2) / 2; o = (o1 + o2) / 2; hp = (hp1 + hp2) / 2; op = (op1 + op2) / 2;
  printf "nginx direct      %10.0f req/s   p99 %6.2f ms\n", d, dp;
  printf "HAProxy 2.6       %10.0f req/s   p99 %6.2f ms   (turns: %.0f, %.0f)\n", h, hp, h1, h2;
  printf "outlast gateway   %10.0f req/s   p99 %6.2f ms   (turns: %.0f, %.0f)\n", o, op, o1, o2;
  printf "ratio outlast/HAProxy: %.2f\n", o / h;
  printf "p99 added over direct: HAProxy %+.2f ms, outlast %+.2f ms\n", hp - dp, op - dp;
}'
