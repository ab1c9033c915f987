#!/usr/bin/env bash
# UDP through outlast's gateway and through nginx's stream module (Debian nginx,
# `listen ... udp reuseport`), the same echo backend behind both, in one run.
#   bench/udp.sh [seconds per step (3)]
# For 64- and 200-byte datagrams and 1,000 and 10,000 client sessions, each server gets
# rising rates until more than 0.1% of datagrams go unanswered; the highest rate under
# that is its packets/s. Sessions idle out after 2 s at both, and each step starts after
# the last one's have ended, so every step opens its sessions afresh. Added latency: p50/p99 round trips at 20,000 datagrams/s, less
# the same load sent straight to the echo backend. Loopback only; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages nginx:nginx
if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >/dev/null
fi
ulimit -n "$(ulimit -Hn)" # 10,000 sessions need as many sockets in each process
cargo build --release --quiet -p outlast-gateway --example udpload
load=$PWD/target/release/examples/udpload

"$load" echo 127.0.0.1:19020 & pids+=($!)
{ cluster_toml 19000 19001; cat <<CONF
[api]
max_connections = 1000
[[services]]
name = "echo"
protocol = "udp"
port = 19004
idle_timeout = "2s"
max_connections = 12000
check = { kind = "udp", send = "ping", receive = "ping" }
[services.backends]
east = ["127.0.0.1:19020"]
west = ["127.0.0.1:19020"]
CONF
} >"$work/outlast.toml"
start_agents

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
worker_rlimit_nofile 19000;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log crit;
events { worker_connections 15000; }
stream {
  upstream echo { server 127.0.0.1:19020; }
  server {
    listen 127.0.0.31:19004 udp reuseport;
    proxy_pass echo;
    proxy_timeout 2s;
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)

# Both answer before measuring.
for _ in $(seq 1 100); do
  a=$("$load" load 127.0.0.11:19004 1 64 100 1 | cut -d' ' -f2)
  b=$("$load" load 127.0.0.31:19004 1 64 100 1 | cut -d' ' -f2)
  [ "$a" -ge 99 ] && [ "$b" -ge 99 ] && break
  sleep 0.3
done

# Highest passing rate: "rate p50 p99" of the last step under 0.1% loss.
best() { # addr sessions size
  local rate pass="0 0 0" out loss
  for rate in 10000 20000 40000 60000 80000 100000 130000 160000 200000 250000; do
    sleep 2.5 # the last step's sessions end (idle 2 s at both) before the next opens its own
    out=$("$load" load "$1" "$2" "$3" "$rate" "$secs")
    loss=$(echo "$out" | cut -d' ' -f3)
    if awk -v l="$loss" 'BEGIN { exit !(l < 0.1) }'; then
      pass="$rate $(echo "$out" | cut -d' ' -f4-5)"
    else
      break
    fi
  done
  echo "$pass"
}
at() { sleep 2.5; "$load" load "$1" "$2" "$3" 20000 "$secs" | cut -d' ' -f3-5; } # loss p50 p99

printf '%-6s %-8s | %-22s | %-22s | %s\n' size sessions "outlast pkt/s (p50/p99)" "nginx pkt/s (p50/p99)" ratio
for size in 64 200; do
  for sessions in 1000 10000; do
    o=$(best 127.0.0.11:19004 "$sessions" "$size")
    n=$(best 127.0.0.31:19004 "$sessions" "$size")
    read -r orate op50 op99 <<<"$o"
    read -r nrate np50 np99 <<<"$n"
    ratio=$(awk -v a="$orate" -v b="$nrate" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-6s %-8s | %-7s (%s/%s us) | %-7s (%s/%s us) | %s\n' "$size" "$sessions" "$orate" "$op50" "$op99" "$nrate" "$np50" "$np99" "$ratio"
  done
done
echo
echo "added round-trip latency at 20,000 datagrams/s, 1,000 sessions, 64 bytes (loss% p50 p99, us):"
read -r dl d50 d99 <<<"$(at 127.0.0.1:19020 1000 64)"
read -r ol o50 o99 <<<"$(at 127.0.0.11:19004 1000 64)"
read -r nl n50 n99 <<<"$(at 127.0.0.31:19004 1000 64)"
echo "  direct:  $dl% $d50 $d99"
echo "  outlast: $ol% $o50 $o99  (added p50 $((o50 - d50)) p99 $((o99 - d99)))"
echo "  nginx:   $nl% $n50 $n99  (added p50 $((n50 - d50)) p99 $((n99 - d99)))"
echo
echo "outlast's gateway counters at east:"
curl -s http://127.0.0.11:19001/v1/status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps([x.get("udp") for x in s["services"] if x["name"]=="echo"][0]))'
